//! Shared by `rexecd` and `rexec`: the generated API types, signal names, exit
//! code rules and duration parsing. Nobody else names generated paths.

pub mod duration;
pub mod legacy;
pub mod signals;

/// Generated gRPC types and stubs for `rexec.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rexec.v1");

    /// Encoded descriptor set (with source info) served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rexec_descriptor");
}

pub use proto::{
    ExecRequest, ExecResponse, Exit, SessionRequest, Started, TtySize, exec_response, exit,
    remote_exec_client::RemoteExecClient, session_request,
};

/// Exit code of the `rexec` CLI when rexec itself failed (connect, auth,
/// protocol), as ssh does.
pub const EXIT_REXEC_FAILURE: i32 = 255;

/// The local exit code that stands for a remote exit status, as ssh reports it:
/// the remote code, or 128 + the signal number when the process died of a signal.
pub fn local_exit_code(status: Option<&exit::Status>) -> i32 {
    match status {
        Some(exit::Status::Code(code)) => code & 0xff,
        Some(exit::Status::Signal(name)) => {
            signals::number(name).map_or(EXIT_REXEC_FAILURE, |n| 128 + n)
        }
        None => EXIT_REXEC_FAILURE,
    }
}
