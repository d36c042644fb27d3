//! Policies: ordered rules of method + path pattern + requirement, compiled for lookup.

use std::fmt;

use http::Method;
use portcullis_core::{AuthMethod, Authentication};
use rustc_hash::FxHashMap;

use crate::pattern::{PathPattern, PatternError, Segments};

/// "Any of" or "all of" a set of values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need<T> {
    /// At least one.
    AnyOf(Vec<T>),
    /// Every one.
    AllOf(Vec<T>),
}

impl<T> Need<T> {
    fn satisfied(&self, has: impl Fn(&T) -> bool) -> bool {
        match self {
            Need::AnyOf(values) => values.iter().any(has),
            Need::AllOf(values) => values.iter().all(has),
        }
    }

    fn values(&self) -> &[T] {
        match self {
            Need::AnyOf(values) | Need::AllOf(values) => values,
        }
    }

    fn word(&self) -> &'static str {
        match self {
            Need::AnyOf(_) => "any of",
            Need::AllOf(_) => "all of",
        }
    }
}

/// What a request must have proven to pass a rule.
///
/// Roles and scopes are looked up across every principal of the request (an API key's
/// roles and a JWT's scopes count together); `methods` says which authentication methods
/// must have succeeded.
///
/// ```
/// use portcullis_core::AuthMethod;
/// use portcullis_role_router::Requirement;
///
/// // Both a client certificate and a JWT, and the `signer` role.
/// let requirement = Requirement::authenticated()
///     .all_methods([AuthMethod::Certificate, AuthMethod::Jwt])
///     .any_role(["signer"]);
/// # let _ = requirement;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    public: bool,
    methods: Option<Need<AuthMethod>>,
    roles: Option<Need<String>>,
    scopes: Option<Need<String>>,
}

impl Requirement {
    /// No authentication needed.
    pub fn public() -> Self {
        Self {
            public: true,
            methods: None,
            roles: None,
            scopes: None,
        }
    }

    /// Any authenticated principal.
    pub fn authenticated() -> Self {
        Self {
            public: false,
            ..Self::public()
        }
    }

    /// At least one of these roles.
    pub fn any_role<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.public = false;
        self.roles = Some(Need::AnyOf(roles.into_iter().map(Into::into).collect()));
        self
    }

    /// Every one of these roles.
    pub fn all_roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.public = false;
        self.roles = Some(Need::AllOf(roles.into_iter().map(Into::into).collect()));
        self
    }

    /// At least one of these scopes.
    pub fn any_scope<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.public = false;
        self.scopes = Some(Need::AnyOf(scopes.into_iter().map(Into::into).collect()));
        self
    }

    /// Every one of these scopes.
    pub fn all_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.public = false;
        self.scopes = Some(Need::AllOf(scopes.into_iter().map(Into::into).collect()));
        self
    }

    /// At least one of these authentication methods must have succeeded.
    pub fn any_method(mut self, methods: impl IntoIterator<Item = AuthMethod>) -> Self {
        self.public = false;
        self.methods = Some(Need::AnyOf(methods.into_iter().collect()));
        self
    }

    /// Every one of these authentication methods must have succeeded.
    pub fn all_methods(mut self, methods: impl IntoIterator<Item = AuthMethod>) -> Self {
        self.public = false;
        self.methods = Some(Need::AllOf(methods.into_iter().collect()));
        self
    }

    /// Whether no authentication is needed.
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// Checks `auth` against the requirement.
    pub fn check(&self, auth: &Authentication) -> Result<(), Refusal> {
        if self.public {
            return Ok(());
        }
        if !auth.is_authenticated() {
            return Err(Refusal::Unauthenticated);
        }
        if let Some(methods) = &self.methods {
            if !methods.satisfied(|m| auth.has(*m)) {
                return Err(Refusal::MissingMethod);
            }
        }
        if let Some(roles) = &self.roles {
            if !roles.satisfied(|r| auth.principals().any(|p| p.has_role(r))) {
                return Err(Refusal::MissingRole);
            }
        }
        if let Some(scopes) = &self.scopes {
            if !scopes.satisfied(|s| auth.principals().any(|p| p.has_scope(s))) {
                return Err(Refusal::MissingScope);
            }
        }
        Ok(())
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.public {
            return f.write_str("public");
        }
        f.write_str("authenticated")?;
        if let Some(m) = &self.methods {
            let names: Vec<&str> = m.values().iter().map(|m| m.as_str()).collect();
            write!(f, ", methods {} [{}]", m.word(), names.join(", "))?;
        }
        if let Some(r) = &self.roles {
            write!(f, ", roles {} [{}]", r.word(), r.values().join(", "))?;
        }
        if let Some(s) = &self.scopes {
            write!(f, ", scopes {} [{}]", s.word(), s.values().join(", "))?;
        }
        Ok(())
    }
}

/// Why a requirement was not met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Nothing authenticated: 401.
    Unauthenticated,
    /// A required authentication method did not succeed: 401.
    MissingMethod,
    /// A required role is missing: 403.
    MissingRole,
    /// A required scope is missing: 403.
    MissingScope,
    /// No rule matched and the policy's default is to deny: 403.
    NoRule,
}

impl Refusal {
    /// A short description for logs, audit notes and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "not authenticated",
            Self::MissingMethod => "a required authentication method did not succeed",
            Self::MissingRole => "a required role is missing",
            Self::MissingScope => "a required scope is missing",
            Self::NoRule => "no rule matches and the default is deny",
        }
    }

    /// Whether the refusal asks the client to authenticate (401) rather than saying no
    /// (403).
    pub fn is_unauthenticated(self) -> bool {
        matches!(self, Self::Unauthenticated | Self::MissingMethod)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule: HTTP methods (or any), a path pattern, and a requirement.
#[derive(Clone, Debug)]
pub struct Rule {
    name: Option<String>,
    methods: Option<Vec<Method>>,
    pattern: String,
    requirement: Requirement,
    line: Option<usize>,
}

impl Rule {
    /// A rule for any HTTP method on `pattern` (see [`PathPattern`]).
    pub fn new(pattern: impl Into<String>, requirement: Requirement) -> Self {
        Self {
            name: None,
            methods: None,
            pattern: pattern.into(),
            requirement,
            line: None,
        }
    }

    /// Restricts the rule to these HTTP methods.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Names the rule in audit notes, logs and lint output.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn at_line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }
}

/// What happens to a request that no rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultAction {
    /// Refuse it with 403 (the default).
    Deny,
    /// Apply this requirement.
    Require(Requirement),
}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    /// Shared with every audit note that names the rule.
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) methods: Option<Box<[Method]>>,
    pub(crate) pattern: PathPattern,
    /// The pattern as a [`MatchedRoute`](portcullis_core::MatchedRoute), shared by
    /// every request that matches the rule.
    pub(crate) route: portcullis_core::MatchedRoute,
    pub(crate) requirement: Requirement,
    pub(crate) line: Option<usize>,
}

impl CompiledRule {
    fn applies_to(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// An ordered list of rules, compiled: the first matching rule decides.
///
/// Rules are indexed by their leading literal segments in a trie, so a lookup only looks
/// at the rules whose literal prefix the path shares: the cost does not grow with rules
/// under other prefixes.
///
/// ```
/// use http::Method;
/// use portcullis_role_router::{Policy, Requirement, Rule};
///
/// let policy = Policy::builder()
///     .rule(Rule::new("/v1/versionInfo", Requirement::public()))
///     .rule(Rule::new("/v1/key/**", Requirement::authenticated().any_role(["key-admin"])).name("keys"))
///     .rule(Rule::new("/v1/**", Requirement::authenticated()).methods([Method::GET]))
///     .build()?;
/// assert_eq!(policy.len(), 3);
/// # Ok::<(), portcullis_role_router::PolicyError>(())
/// ```
#[derive(Debug)]
pub struct Policy {
    pub(crate) rules: Box<[CompiledRule]>,
    pub(crate) default: DefaultAction,
    index: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// Keyed with FxHash, which is several times cheaper than SipHash on short
    /// segments. Hash flooding needs control of the keys, and these come from the
    /// policy, not from requests: a request can only look one up.
    children: FxHashMap<Box<str>, Node>,
    /// Rules whose literal prefix ends here, in policy order.
    rules: Vec<u32>,
}

impl Node {
    fn child(&self, segment: &str) -> Option<&Node> {
        self.children.get(segment)
    }

    fn child_or_insert(&mut self, segment: &str) -> &mut Node {
        self.children.entry(segment.into()).or_default()
    }
}

/// How deep the trie walk remembers nodes on the stack; deeper literal prefixes are
/// still found, only evaluated in walk order.
const WALK_DEPTH: usize = 8;

/// The outcome of matching a request against a [`Policy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The index of the matched rule; `None` when the default applied.
    pub rule: Option<usize>,
    /// `Ok` to allow, or why not.
    pub result: Result<(), Refusal>,
}

impl Policy {
    /// Starts a policy.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            rules: Vec::new(),
            default: DefaultAction::Deny,
        }
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The name of rule `index` (its given name, or `rule N` counting from 1).
    pub fn rule_name(&self, index: usize) -> Option<&str> {
        self.rules.get(index).map(|r| &*r.name)
    }

    /// The name of rule `index`, shared (an audit note keeps it without a copy).
    pub(crate) fn shared_rule_name(&self, index: usize) -> Option<&std::sync::Arc<str>> {
        self.rules.get(index).map(|r| &r.name)
    }

    /// Rule `index`'s pattern as a route, for per-route keys.
    pub(crate) fn rule_route(&self, index: usize) -> Option<&portcullis_core::MatchedRoute> {
        self.rules.get(index).map(|r| &r.route)
    }

    /// The source line of rule `index`, for policies read from a file.
    pub fn rule_line(&self, index: usize) -> Option<usize> {
        self.rules.get(index).and_then(|r| r.line)
    }

    /// A one-line description of rule `index`.
    pub fn describe_rule(&self, index: usize) -> Option<String> {
        let rule = self.rules.get(index)?;
        let methods = match &rule.methods {
            None => "*".to_owned(),
            Some(m) => m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
        };
        Some(format!(
            "{methods} {} -> {}",
            rule.pattern, rule.requirement
        ))
    }

    /// The index of the first rule matching `method` and a normalized `path`.
    pub fn find(&self, method: &Method, path: &str) -> Option<usize> {
        let mut best: Option<usize> = None;
        // `rest` is the path after the node's literal prefix, which the trie walk has
        // already compared: patterns match only what follows it.
        let mut consider = |node: &Node, depth: usize, rest: &Segments<'_>| {
            for &index in &node.rules {
                let index = index as usize;
                if best.is_some_and(|b| index >= b) {
                    break;
                }
                let rule = &self.rules[index];
                if rule.applies_to(method) && rule.pattern.matches_after(depth, rest) {
                    best = Some(index);
                    break;
                }
            }
        };
        // Walk the trie first, then consider the deepest node's rules first: specific
        // rules usually come early in a policy, so the broad rules near the root (a
        // `/**` catch-all) are then skipped by the index bound instead of matched.
        let mut walked: [Option<(&Node, Segments<'_>)>; WALK_DEPTH] = [const { None }; WALK_DEPTH];
        let mut node = &self.index;
        let mut rest = Segments::of(path);
        walked[0] = Some((node, rest.clone()));
        let mut depth = 0;
        while let Some(segment) = rest.next() {
            let Some(child) = node.child(segment) else {
                break;
            };
            node = child;
            depth += 1;
            match walked.get_mut(depth) {
                Some(slot) => *slot = Some((node, rest.clone())),
                None => consider(node, depth, &rest),
            }
        }
        for (depth, entry) in walked.iter().enumerate().rev() {
            if let Some((node, rest)) = entry {
                consider(node, depth, rest);
            }
        }
        best
    }

    /// Decides a request: the first matching rule's requirement, or the default.
    pub fn decide(&self, method: &Method, path: &str, auth: &Authentication) -> Verdict {
        match self.find(method, path) {
            Some(index) => Verdict {
                rule: Some(index),
                result: self.rules[index].requirement.check(auth),
            },
            None => Verdict {
                rule: None,
                result: match &self.default {
                    DefaultAction::Deny => Err(Refusal::NoRule),
                    DefaultAction::Require(requirement) => requirement.check(auth),
                },
            },
        }
    }

    /// Rules that can never match because an earlier rule covers every request they
    /// would match.
    pub fn lint(&self) -> Vec<ShadowedRule> {
        let mut found = Vec::new();
        for (later, rule) in self.rules.iter().enumerate() {
            let earlier = self.rules[..later].iter().position(|e| {
                methods_cover(e.methods.as_deref(), rule.methods.as_deref())
                    && e.pattern.covers(&rule.pattern)
            });
            if let Some(earlier) = earlier {
                found.push(ShadowedRule {
                    rule: later,
                    by: earlier,
                });
            }
        }
        found
    }
}

fn methods_cover(a: Option<&[Method]>, b: Option<&[Method]>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
    }
}

/// A lint finding: `rule` can never match because `by`, earlier, covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowedRule {
    /// The rule that never matches.
    pub rule: usize,
    /// The earlier rule that covers it.
    pub by: usize,
}

/// Builds a [`Policy`].
#[derive(Debug)]
#[must_use = "call .build() to compile the policy"]
pub struct PolicyBuilder {
    rules: Vec<Rule>,
    default: DefaultAction,
}

impl PolicyBuilder {
    /// Appends a rule; earlier rules win.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// What requests that match no rule get ([`DefaultAction::Deny`] unless set).
    pub fn default_action(mut self, default: DefaultAction) -> Self {
        self.default = default;
        self
    }

    /// Compiles the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        let mut compiled = Vec::with_capacity(self.rules.len());
        let mut index = Node::default();
        for (position, rule) in self.rules.into_iter().enumerate() {
            let name = rule
                .name
                .unwrap_or_else(|| format!("rule {}", position + 1));
            let pattern = PathPattern::new(&rule.pattern).map_err(|error| PolicyError {
                rule: name.clone(),
                line: rule.line,
                error,
            })?;
            let mut node = &mut index;
            for literal in pattern.literal_prefix() {
                node = node.child_or_insert(literal);
            }
            node.rules.push(u32::try_from(position).unwrap_or(u32::MAX));
            compiled.push(CompiledRule {
                name: name.into(),
                methods: rule.methods.map(Vec::into_boxed_slice),
                route: portcullis_core::MatchedRoute(pattern.as_str().into()),
                pattern,
                requirement: rule.requirement,
                line: rule.line,
            });
        }
        Ok(Policy {
            rules: compiled.into_boxed_slice(),
            default: self.default,
            index,
        })
    }
}

/// A rule whose pattern does not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    rule: String,
    line: Option<usize>,
    error: PatternError,
}

impl PolicyError {
    /// The rule's line, for policies read from a file.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The rule's name and what is wrong with it.
    pub fn detail(&self) -> String {
        format!("{}: {}", self.rule, self.error)
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.detail()),
            None => f.write_str(&self.detail()),
        }
    }
}

impl std::error::Error for PolicyError {}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::Principal;
    use proptest::prelude::*;

    fn auth(principals: &[(AuthMethod, &[&str], &[&str])]) -> Authentication {
        let mut auth = Authentication::new();
        for (method, roles, scopes) in principals {
            auth.insert(
                Principal::builder("p", *method)
                    .roles(roles.iter().copied())
                    .scopes(scopes.iter().copied())
                    .build(),
            )
            .unwrap();
        }
        auth
    }

    #[test]
    fn requirement_checks() {
        let none = Authentication::new();
        let key = auth(&[(AuthMethod::ApiKey, &["reader"], &[])]);
        let both = auth(&[
            (AuthMethod::Certificate, &["signer"], &[]),
            (AuthMethod::Jwt, &[], &["keys:read", "keys:write"]),
        ]);
        assert_eq!(Requirement::public().check(&none), Ok(()));
        assert_eq!(
            Requirement::authenticated().check(&none),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(Requirement::authenticated().check(&key), Ok(()));
        assert_eq!(
            Requirement::authenticated()
                .any_role(["reader", "x"])
                .check(&key),
            Ok(())
        );
        assert_eq!(
            Requirement::authenticated()
                .all_roles(["reader", "x"])
                .check(&key),
            Err(Refusal::MissingRole)
        );
        let mtls_and_jwt =
            Requirement::authenticated().all_methods([AuthMethod::Certificate, AuthMethod::Jwt]);
        assert_eq!(mtls_and_jwt.check(&key), Err(Refusal::MissingMethod));
        assert_eq!(mtls_and_jwt.check(&both), Ok(()));
        // Roles and scopes count across principals.
        let sign = mtls_and_jwt
            .clone()
            .any_role(["signer"])
            .all_scopes(["keys:read", "keys:write"]);
        assert_eq!(sign.check(&both), Ok(()));
        assert_eq!(
            Requirement::authenticated()
                .any_scope(["admin"])
                .check(&both),
            Err(Refusal::MissingScope)
        );
        assert!(Refusal::MissingMethod.is_unauthenticated());
        assert!(!Refusal::MissingRole.is_unauthenticated());
    }

    fn policy(rules: Vec<Rule>) -> Policy {
        rules
            .into_iter()
            .fold(Policy::builder(), PolicyBuilder::rule)
            .build()
            .unwrap()
    }

    #[test]
    fn first_match_wins_across_prefixes() {
        let p = policy(vec![
            Rule::new("/v1/key/{id}/attributes", Requirement::public()).name("attrs"),
            Rule::new("/**", Requirement::authenticated())
                .methods([Method::POST])
                .name("post-anything"),
            Rule::new(
                "/v1/key/**",
                Requirement::authenticated().any_role(["admin"]),
            )
            .name("keys"),
            Rule::new("/v1/**", Requirement::authenticated()).name("v1"),
        ]);
        let name = |m: Method, path: &str| p.find(&m, path).and_then(|i| p.rule_name(i));
        assert_eq!(name(Method::GET, "/v1/key/k1/attributes"), Some("attrs"));
        assert_eq!(name(Method::POST, "/v1/key/k1"), Some("post-anything"));
        assert_eq!(name(Method::GET, "/v1/key/k1"), Some("keys"));
        assert_eq!(name(Method::GET, "/v1/other"), Some("v1"));
        assert_eq!(name(Method::GET, "/v2"), None);
        assert_eq!(name(Method::POST, "/v2"), Some("post-anything"));
    }

    #[test]
    fn default_deny_or_requirement() {
        let deny = policy(vec![]);
        assert_eq!(
            deny.decide(&Method::GET, "/x", &Authentication::new()),
            Verdict {
                rule: None,
                result: Err(Refusal::NoRule)
            }
        );
        let open = Policy::builder()
            .default_action(DefaultAction::Require(Requirement::public()))
            .build()
            .unwrap();
        assert_eq!(
            open.decide(&Method::GET, "/x", &Authentication::new())
                .result,
            Ok(())
        );
    }

    #[test]
    fn build_errors_name_the_rule() {
        let err = Policy::builder()
            .rule(Rule::new("/ok", Requirement::public()))
            .rule(Rule::new("no-slash", Requirement::public()).name("broken"))
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("broken: invalid path pattern `no-slash`"),
            "{err}"
        );
        let err = Policy::builder()
            .rule(Rule::new("/a//b", Requirement::public()).at_line(7))
            .build()
            .unwrap_err();
        assert!(err.to_string().starts_with("line 7: rule 1:"), "{err}");
    }

    #[test]
    fn lint_finds_shadowed_rules() {
        let p = policy(vec![
            Rule::new(
                "/v1/key/**",
                Requirement::authenticated().any_role(["admin"]),
            ),
            Rule::new("/v1/key/{id}/attributes", Requirement::public()),
            Rule::new("/v1/versionInfo", Requirement::public()).methods([Method::GET]),
            Rule::new("/v1/*", Requirement::authenticated()).methods([Method::GET, Method::POST]),
            Rule::new("/v1/versionInfo", Requirement::public()).methods([Method::POST]),
            Rule::new("/v2/**", Requirement::public()).methods([Method::GET]),
            Rule::new("/v2/x", Requirement::public()),
        ]);
        assert_eq!(
            p.lint(),
            vec![
                ShadowedRule { rule: 1, by: 0 },
                ShadowedRule { rule: 4, by: 3 }
            ]
        );
    }

    #[test]
    fn describe() {
        let p = policy(vec![Rule::new(
            "/v1/**",
            Requirement::authenticated()
                .any_role(["a", "b"])
                .all_methods([AuthMethod::Jwt]),
        )
        .methods([Method::GET, Method::POST])]);
        assert_eq!(
            p.describe_rule(0).unwrap(),
            "GET,POST /v1/** -> authenticated, methods all of [jwt], roles any of [a, b]"
        );
    }

    fn arb_rule() -> impl Strategy<Value = (Option<bool>, String)> {
        let segment = prop_oneof![
            "[ab]".prop_map(String::from),
            Just("*".to_owned()),
            Just("**".to_owned()),
            Just("a*".to_owned()),
        ];
        (
            proptest::option::of(any::<bool>()),
            proptest::collection::vec(segment, 0..4).prop_map(|s| format!("/{}", s.join("/"))),
        )
    }

    proptest! {
        // The trie-indexed lookup agrees with a linear scan of the rules in order.
        #[test]
        fn indexed_find_agrees_with_linear_scan(
            rules in proptest::collection::vec(arb_rule(), 0..30),
            paths in proptest::collection::vec(proptest::collection::vec("[ab]{1,2}", 0..4), 1..20),
        ) {
            let built: Vec<Rule> = rules.iter().map(|(get_only, pattern)| {
                let rule = Rule::new(pattern.clone(), Requirement::public());
                match get_only {
                    Some(true) => rule.methods([Method::GET]),
                    Some(false) => rule.methods([Method::POST]),
                    None => rule,
                }
            }).collect();
            let p = policy(built);
            for segments in paths {
                let path = format!("/{}", segments.join("/"));
                for method in [Method::GET, Method::POST] {
                    let linear = p.rules.iter().position(|r| r.applies_to(&method) && r.pattern.matches(&path));
                    prop_assert_eq!(p.find(&method, &path), linear, "{} {}", method, path);
                }
            }
        }
    }
}
