//! Accepted gRPC connections, with TCP_NODELAY, and a pause after a failed
//! accept: tonic retries a failed accept at once, so running out of file
//! descriptors would spin a core until one is freed.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Streams connections from `listener` until the stream is dropped, which
/// also closes the listening socket.
pub fn accept_with_backoff(listener: TcpListener) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    backoff = FIRST_BACKOFF;
                    // Set here: Server::tcp_nodelay does not reach a listener we bound.
                    let _ = stream.set_nodelay(true);
                    if sender.send(Ok(stream)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        backoff_ms = backoff.as_millis() as u64,
                        "accept failed: {e}"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = sender.closed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}
