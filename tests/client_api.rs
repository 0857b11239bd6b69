//! The client library and the CLI against a stand-in server that misbehaves
//! in ways a real rexecd rarely does (so the client's handling is pinned down).

use std::pin::Pin;
use std::process::{Command, Stdio};

use rexec::client::{Client, ClientOptions};
use rexec::proto::remote_exec_server::{RemoteExec, RemoteExecServer};
use rexec::proto::{self, ExecRequest, ExecResponse, SessionRequest, exec_response, exit};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

mod common;

type Events = Pin<Box<dyn Stream<Item = Result<ExecResponse, Status>> + Send>>;

/// Answers every call with "hi", exit 7, and then an error status in the trailers.
struct ExitThenError;

fn events() -> Events {
    let event = |event| Ok(ExecResponse { event: Some(event) });
    Box::pin(tokio_stream::iter(vec![
        event(exec_response::Event::Stdout("hi\n".into())),
        event(exec_response::Event::Exit(proto::Exit {
            status: Some(exit::Status::Code(7)),
            ..Default::default()
        })),
        Err(Status::internal("trailers broke after the exit")),
    ]))
}

#[tonic::async_trait]
impl RemoteExec for ExitThenError {
    type ExecStream = Events;
    type SessionStream = Events;

    async fn exec(&self, _: Request<ExecRequest>) -> Result<Response<Events>, Status> {
        Ok(Response::new(events()))
    }

    async fn session(
        &self,
        _: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Events>, Status> {
        Ok(Response::new(events()))
    }
}

/// Serves `ExitThenError` on a loopback port until the runtime ends.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RemoteExecServer::new(ExitThenError))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_received_stands_when_the_trailers_then_fail() {
    let addr = serve().await;
    let mut client = Client::connect(&addr, &ClientOptions::default())
        .await
        .unwrap();
    let output = client
        .output(rexec::client::Command::shell("x"))
        .await
        .expect("the exit arrived before the error");
    assert_eq!(output.stdout, b"hi\n");
    assert_eq!(output.status.code, Some(7));

    // The CLI, one-shot (a session) and through the REPL (execs).
    let cli = |args: &[&str], stdin: Stdio| {
        let addr = addr.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(common::REXEC)
                .args(["--addr", &addr])
                .args(&args)
                .stdin(stdin)
                .output()
                .unwrap()
        })
    };
    let out = cli(&["--", "x"], Stdio::null()).await.unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = cli(&["-i", "--", "x"], Stdio::null()).await.unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}
