//! Exit statuses, stable across releases so scripts can rely on them.

use std::process::ExitCode;

/// Outcome of a command, mapped to its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything worked: status 0.
    Success,
    /// A fatal error stopped the command: status 1.
    Error,
    /// Invalid command-line usage (clap's own status): status 2.
    Usage,
    /// The command finished, but some files could not be read: status 3.
    SomeFilesFailed,
    /// Another `index` run has the database locked: status 4.
    Busy,
    /// Stopped by Ctrl-C (SIGINT) after committing the current batch:
    /// status 130.
    Interrupted,
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Success => 0,
            Status::Error => 1,
            Status::Usage => 2,
            Status::SomeFilesFailed => 3,
            Status::Busy => 4,
            Status::Interrupted => 130,
        }
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> ExitCode {
        ExitCode::from(status.code())
    }
}
