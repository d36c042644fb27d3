//! Policies from TOML files, with the builder's expressive power and errors that name
//! the line.

use std::fmt;
use std::path::Path;

use http::Method;
use portcullis_core::toml_lines::TomlLines;
use portcullis_core::AuthMethod;
use serde::Deserialize;

use crate::policy::{DefaultAction, Policy, PolicyBuilder, Requirement, Rule};

/// A policy file, for example:
///
/// ```toml
/// # What requests that match no rule get: "deny" (the default), "public" or
/// # "authenticated".
/// default = "deny"
///
/// [[rule]]
/// name = "version"
/// path = "/v1/versionInfo"
/// public = true
///
/// [[rule]]
/// name = "key attributes"
/// methods = ["GET"]                  # any method when left out
/// path = "/v1/key/**/attributes"
/// roles_any = ["key-reader", "key-admin"]
///
/// [[rule]]
/// name = "signing"
/// path = "/v1/key/{id}/sign"
/// auth_all = ["certificate", "jwt"]  # or auth_any; "certificate", "api_key", "jwt"
/// roles_all = ["signer"]
/// scopes_any = ["keys:sign"]         # or scopes_all
///
/// [[rule]]
/// path = "/v1/**"
/// authenticated = true
/// ```
///
/// Every rule says what it needs: `public = true`, `authenticated = true`, or at least
/// one of `roles_*`, `scopes_*`, `auth_*`. Unknown keys are errors, so a typo cannot
/// silently open a route.
pub fn parse_policy(source: &str, text: &str) -> Result<Policy, PolicyFileError> {
    let lines = TomlLines::new(text);
    let file: PolicyFile = toml::from_str(text).map_err(|error| PolicyFileError {
        source: source.to_owned(),
        line: error.span().map(|span| lines.line_at(span.start)),
        message: error.message().to_owned(),
    })?;
    let default = match file.default.as_deref() {
        None | Some("deny") => DefaultAction::Deny,
        Some("public") => DefaultAction::Require(Requirement::public()),
        Some("authenticated") => DefaultAction::Require(Requirement::authenticated()),
        Some(other) => {
            return Err(PolicyFileError {
                source: source.to_owned(),
                line: lines.line_of("default"),
                message: format!(
                    "default is \"deny\", \"public\" or \"authenticated\", not {other:?}"
                ),
            })
        }
    };
    let mut builder: PolicyBuilder = Policy::builder().default_action(default);
    for spanned in file.rule {
        let line = lines.line_at(spanned.span().start);
        let error = |message: String| PolicyFileError {
            source: source.to_owned(),
            line: Some(line),
            message,
        };
        let rule = spanned.into_inner();
        builder = builder.rule(rule.into_rule(line).map_err(error)?);
    }
    builder.build().map_err(|error| PolicyFileError {
        source: source.to_owned(),
        line: error.line(),
        message: error.detail(),
    })
}

/// Reads a policy file (see [`parse_policy`]).
pub fn read_policy(path: impl AsRef<Path>) -> Result<Policy, PolicyFileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| PolicyFileError {
        source: path.display().to_string(),
        line: None,
        message: format!("cannot read: {error}"),
    })?;
    parse_policy(&path.display().to_string(), &text)
}

/// An error in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFileError {
    source: String,
    line: Option<usize>,
    message: String,
}

impl PolicyFileError {
    /// The line the error is on, when it is known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// What is wrong, without the source and line.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PolicyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for PolicyFileError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<String>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Option<String>,
    methods: Option<Vec<String>>,
    path: String,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    authenticated: bool,
    roles_any: Option<Vec<String>>,
    roles_all: Option<Vec<String>>,
    scopes_any: Option<Vec<String>>,
    scopes_all: Option<Vec<String>>,
    auth_any: Option<Vec<String>>,
    auth_all: Option<Vec<String>>,
}

impl RuleFile {
    fn into_rule(self, line: usize) -> Result<Rule, String> {
        let constrained = self.roles_any.is_some()
            || self.roles_all.is_some()
            || self.scopes_any.is_some()
            || self.scopes_all.is_some()
            || self.auth_any.is_some()
            || self.auth_all.is_some();
        if self.public && (constrained || self.authenticated) {
            return Err(
                "a public rule cannot also require authentication, roles, scopes or methods".into(),
            );
        }
        if !self.public && !self.authenticated && !constrained {
            return Err("say what the rule needs: public = true, authenticated = true, or roles_*, scopes_*, auth_*".into());
        }
        let both = |a: &Option<Vec<String>>, b: &Option<Vec<String>>, what: &str| {
            if a.is_some() && b.is_some() {
                Err(format!("use {what}_any or {what}_all, not both"))
            } else {
                Ok(())
            }
        };
        both(&self.roles_any, &self.roles_all, "roles")?;
        both(&self.scopes_any, &self.scopes_all, "scopes")?;
        both(&self.auth_any, &self.auth_all, "auth")?;
        for list in [
            &self.roles_any,
            &self.roles_all,
            &self.scopes_any,
            &self.scopes_all,
            &self.auth_any,
            &self.auth_all,
        ]
        .into_iter()
        .flatten()
        {
            if list.is_empty() {
                return Err(
                    "an empty list can never be satisfied (any) or always is (all): leave it out"
                        .into(),
                );
            }
        }

        let mut requirement = if self.public {
            Requirement::public()
        } else {
            Requirement::authenticated()
        };
        if let Some(roles) = self.roles_any {
            requirement = requirement.any_role(roles);
        }
        if let Some(roles) = self.roles_all {
            requirement = requirement.all_roles(roles);
        }
        if let Some(scopes) = self.scopes_any {
            requirement = requirement.any_scope(scopes);
        }
        if let Some(scopes) = self.scopes_all {
            requirement = requirement.all_scopes(scopes);
        }
        if let Some(methods) = self.auth_any {
            requirement = requirement.any_method(auth_methods(&methods)?);
        }
        if let Some(methods) = self.auth_all {
            requirement = requirement.all_methods(auth_methods(&methods)?);
        }
        let mut rule = Rule::new(self.path, requirement).at_line(line);
        if let Some(name) = self.name {
            rule = rule.name(name);
        }
        if let Some(methods) = self.methods {
            if methods.is_empty() {
                return Err(
                    "methods = [] matches nothing: leave it out to match any method".into(),
                );
            }
            let parsed = methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("{m:?} is not an HTTP method"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rule = rule.methods(parsed);
        }
        Ok(rule)
    }
}

fn auth_methods(names: &[String]) -> Result<Vec<AuthMethod>, String> {
    names
        .iter()
        .map(|name| name.parse::<AuthMethod>().map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{Authentication, Principal};

    const HSM: &str = r#"
default = "deny"

[[rule]]
name = "version"
path = "/v1/versionInfo"
public = true

[[rule]]
name = "approval tasks"
path = "/v1/filtered**ApprovalTask"
roles_any = ["approver"]

[[rule]]
name = "key attributes"
methods = ["get"]
path = "/v1/key/**/attributes"
roles_any = ["key-reader", "key-admin"]

[[rule]]
name = "keys"
path = "/v1/key/**"
roles_all = ["key-admin"]
auth_any = ["certificate", "jwt"]
"#;

    fn with_roles(method: AuthMethod, roles: &[&str]) -> Authentication {
        let mut auth = Authentication::new();
        auth.insert(
            Principal::builder("p", method)
                .roles(roles.iter().copied())
                .build(),
        )
        .unwrap();
        auth
    }

    #[test]
    fn hsm_policy_from_toml() {
        let policy = parse_policy("hsm.toml", HSM).unwrap();
        assert_eq!(policy.len(), 4);
        assert_eq!(policy.rule_line(0), Some(4));
        let reader = with_roles(AuthMethod::Jwt, &["key-reader"]);
        let admin_key = with_roles(AuthMethod::ApiKey, &["key-admin"]);
        let admin_jwt = with_roles(AuthMethod::Jwt, &["key-admin"]);
        let decide = |m: Method, path: &str, auth: &Authentication| policy.decide(&m, path, auth);

        assert_eq!(
            decide(Method::GET, "/v1/versionInfo", &Authentication::new()).result,
            Ok(())
        );
        assert_eq!(
            decide(Method::GET, "/v1/key/k1/attributes", &reader).result,
            Ok(())
        );
        assert_eq!(
            decide(Method::PUT, "/v1/key/k1/attributes", &reader).result,
            Err(crate::Refusal::MissingRole)
        );
        assert_eq!(
            decide(Method::DELETE, "/v1/key/k1", &admin_key).result,
            Err(crate::Refusal::MissingMethod)
        );
        assert_eq!(
            decide(Method::DELETE, "/v1/key/k1", &admin_jwt).result,
            Ok(())
        );
        assert_eq!(
            decide(Method::GET, "/v1/filteredKeyApprovalTask", &admin_jwt).result,
            Err(crate::Refusal::MissingRole)
        );
        assert_eq!(
            decide(Method::GET, "/v2/anything", &admin_jwt).result,
            Err(crate::Refusal::NoRule)
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("[[rule]]\npath = \"/a\"\npublik = true\n", Some(3), "unknown field `publik`"),
            ("[[rule]]\npath = \"/a\"\n", Some(1), "say what the rule needs"),
            ("[[rule]]\npath = \"/a\"\npublic = true\n\n[[rule]]\npath = \"/b\"\npublic = true\nroles_any = [\"x\"]\n", Some(5), "public rule cannot"),
            ("[[rule]]\npath = \"/a\"\nroles_any = [\"x\"]\nroles_all = [\"y\"]\n", Some(1), "not both"),
            ("[[rule]]\npath = \"/a\"\nauth_any = [\"password\"]\n", Some(1), "not an authentication method"),
            ("[[rule]]\npath = \"/a\"\nmethods = [\"G ET\"]\npublic = true\n", Some(1), "not an HTTP method"),
            ("[[rule]]\npath = \"/a\"\nroles_any = []\n", Some(1), "empty list"),
            ("x = \n", Some(1), ""),
            ("\n\ndefault = \"allow\"\n", Some(3), "default is"),
        ] {
            let err = parse_policy("p.toml", text).unwrap_err();
            assert_eq!(err.line(), line, "{text:?}: {err}");
            assert!(err.to_string().contains(needle), "{err}");
            assert!(err.to_string().starts_with("p.toml:"), "{err}");
        }
        let err = parse_policy("p.toml", "[[rule]]\npath = \"a\"\npublic = true\n").unwrap_err();
        assert!(
            err.to_string().contains("invalid path pattern `a`"),
            "{err}"
        );
    }
}
