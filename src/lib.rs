//! Shared by `rexecd` and `rexec`: the generated API types, the client API
//! (`client`), signal names and duration parsing. Outside this crate nobody
//! names generated paths.

pub mod address;
pub mod client;
pub mod ending;
pub mod files;
pub mod legacy;
pub mod local_token;
pub mod nats;
pub mod signals;
mod tls_probe;
pub mod tls_words;
pub mod units;
pub mod wrong_port;

/// Generated gRPC types and stubs for `rexec.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rexec.v1");

    /// Encoded descriptor set (with source info) served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rexec_descriptor");
}

pub use proto::{
    AgentInfo, ExecRequest, ExecResponse, Exit, SessionRequest, Started, TtySize, exec_response,
    exit, remote_exec_client::RemoteExecClient, session_request,
};

/// Exit code of the `rexec` CLI when rexec itself failed (connect, auth,
/// protocol), as ssh does (`ending::FAILED`).
pub const EXIT_REXEC_FAILURE: i32 = ending::FAILED as i32;
