//! `rexec.v1.discover`: every agent answers with its `AgentInfo`, so an
//! operator gets an inventory without writing one.

use prost::Message;
use tokio_stream::StreamExt;

use super::Identity;

/// Answers discovery requests until the connection is drained. The request's
/// payload is ignored, so garbage on the subject costs one reply, nothing else.
pub async fn serve(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    identity: Identity,
) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else {
            continue;
        };
        let info = rexec::AgentInfo {
            name: identity.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: identity.started.elapsed().as_millis() as u64,
            labels: identity.labels.clone().into_iter().collect(),
        };
        if let Err(e) = client.publish(reply, info.encode_to_vec().into()).await {
            tracing::debug!(error = %e, "nats: discovery reply not sent");
        }
    }
}
