//! `portcullis audit verify`: check an audit log's hash chain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use portcullis_audit::{verify_files, VerifyError, GENESIS};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the SHA-256 chain of audit files written with `hash_chain(true)`, oldest
    /// first, and report the first broken link.
    ///
    /// Exit status: 0 when the chain is intact, 2 when it is broken, 1 on errors.
    Verify {
        /// The files, oldest first (rotated files, then the current one).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub(crate) fn run(command: AuditCommand) -> Result<ExitCode, String> {
    let AuditCommand::Verify { files } = command;
    match verify_files(&files) {
        Ok(report) => {
            println!("{} records, chain intact", report.records);
            if report.records > 0 && report.starts_from != GENESIS {
                println!(
                    "the first record continues an earlier file (prev {}); give that file too to check the link",
                    hex_prefix(&report.starts_from)
                );
            }
            println!("last hash: {}", hex_prefix(&report.last_hash));
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Broken(chain_break)) => {
            println!("broken: {chain_break}");
            Ok(ExitCode::from(2))
        }
        Err(error) => Err(error.to_string()),
    }
}

fn hex_prefix(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
