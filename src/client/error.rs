//! What went wrong on a call, as one line a person can act on.

use crate::tls_words::Side;

/// What went wrong, as one line (`Display`).
#[derive(Debug)]
pub enum Error {
    /// The connection could not be made.
    Connect { addr: String, reason: String },
    /// The server answered with a gRPC status.
    Status(tonic::Status),
    /// The server broke the protocol (e.g. no exit event).
    Protocol(String),
}

impl Error {
    /// The gRPC status code, when the server sent one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect { addr, reason } => write!(f, "cannot connect to {addr}: {reason}"),
            Error::Status(status) => match crate::tls_words::find(status, Side::Client) {
                Some(words) => write!(f, "TLS: {words}"),
                None => f.write_str(&describe_status(status)),
            },
            Error::Protocol(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

/// The innermost error, as "connection refused" rather than a transport chain.
pub(super) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    if let Some(words) = crate::tls_words::find(error, Side::Client) {
        return format!("TLS: {words}");
    }
    let current = innermost(error);
    if let Some(io) = current.downcast_ref::<std::io::Error>() {
        return describe_io(io);
    }
    let text = current.to_string();
    if text.contains("timed out") {
        "timed out".into()
    } else {
        text
    }
}

/// Whether a failed connection got as far as something answering on the
/// port; only then is it worth asking the port what it is.
pub(super) fn reached_port(error: &(dyn std::error::Error + 'static)) -> bool {
    let current = innermost(error);
    if let Some(io) = current.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        if matches!(
            io.kind(),
            ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable
        ) {
            return false;
        }
    }
    !current.to_string().contains("timed out")
}

fn innermost<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current
}

/// An I/O error of a connection in a person's words: "connection refused".
pub fn describe_io(error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let text = match error.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset",
        TimedOut => "timed out",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        _ => return error.to_string(),
    };
    text.to_string()
}

/// An HTTP answer without gRPC in it (a web server or proxy on the port),
/// which tonic reports as "grpc-status header missing, mapped from HTTP
/// status code 404", as a connection failure.
pub(super) fn not_grpc(addr: &str, status: &tonic::Status) -> Option<Error> {
    let (_, code) = status
        .message()
        .split_once("grpc-status header missing, mapped from HTTP status code ")?;
    Some(Error::Connect {
        addr: addr.to_string(),
        reason: format!(
            "the port answered HTTP {code} without gRPC: an HTTP server or proxy, not rexecd"
        ),
    })
}

/// A status as one line: "not found: program not found: foo".
pub fn describe_status(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut words = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    let message = status.message().trim();
    if message.is_empty() {
        words
    } else {
        format!("{words}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_one_line() {
        let status = tonic::Status::not_found("program not found: foo");
        assert_eq!(
            describe_status(&status),
            "not found: program not found: foo"
        );
        assert_eq!(
            describe_status(&tonic::Status::invalid_argument("")),
            "invalid argument"
        );
    }
}
