//! The per-file digest of the Files API: SHA-256 by default (what a client
//! generated in any language sends), XXH3-128 when a transfer asks for it
//! (what `rexec cp` asks for), each checked by the receiver whichever way
//! the file goes, and refused when it is missing, wrong or unknown.

mod common;

use std::path::Path;
use std::time::Duration;

use common::files::{
    commit, daemon_in, data, end, end_xxh3, entry, files_client, sha256, start_with, temporaries,
};
use common::{Daemon, output_within, random_file, scratch_dir, sha256_file};
use rexec::proto::{Digest, DownloadRequest, FileEnd, FileType, download_response};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

fn xxh3(bytes: &[u8]) -> Vec<u8> {
    xxhash_rust::xxh3::xxh3_128(bytes).to_be_bytes().to_vec()
}

/// `rexec --addr A cp ARGS...` from `cwd`; its exit code and stderr.
fn cp(daemon: &Daemon, cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut command = daemon.rexec();
    command.current_dir(cwd).arg("cp").args(args);
    let out = output_within(&mut command, b"", LIMIT);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `digest` of each transfer line rexecd wrote, in order.
fn audited_digests(daemon: &Daemon) -> Vec<String> {
    daemon
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["audit"] == "transfer")
        .map(|line| line["digest"].as_str().unwrap_or("none").to_string())
        .collect()
}

#[test]
fn cp_checks_with_xxh3_unless_told_sha256_both_ways() {
    let (daemon, remote) = daemon_in("digest-cli", &[]);
    let local = scratch_dir("digest-cli-local");
    let source = random_file(&local, "data.bin", 9 << 20);
    let want = sha256_file(&source);
    for (args, name) in [(&[][..], "xxh3"), (&["--digest", "sha256"][..], "sha256")] {
        let (remote_path, back) = (format!(":{name}.bin"), format!("{name}.back"));
        let up = [args, &["data.bin", &remote_path]].concat();
        assert_eq!(cp(&daemon, &local, &up), (Some(0), String::new()));
        assert_eq!(sha256_file(&remote.join(format!("{name}.bin"))), want);
        let down = [args, &[&remote_path, &back]].concat();
        assert_eq!(cp(&daemon, &local, &down), (Some(0), String::new()));
        assert_eq!(sha256_file(&local.join(format!("{name}.back"))), want);
    }
    assert_eq!(
        audited_digests(&daemon),
        ["xxh3_128", "xxh3_128", "sha256", "sha256"]
    );
    let (code, stderr) = cp(&daemon, &local, &["--digest", "md5", "data.bin", ":"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("md5"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_checked_with_the_digest_it_asked_for() {
    let (daemon, remote) = daemon_in("digest-up", &[]);
    let mut client = files_client(&daemon).await;
    let xxh = Digest::Xxh3128 as i32;
    let upload = |digest: i32, end: rexec::proto::UploadRequest| {
        vec![
            start_with("x.bin", digest),
            entry("x.bin", FileType::File, 5),
            data(b"hello"),
            end,
            commit(),
        ]
    };
    let refused = [
        // XXH3-128 of other bytes.
        (upload(xxh, end_xxh3(&xxh3(b"hellp"))), Code::DataLoss),
        // A right SHA-256, where the upload said XXH3-128.
        (upload(xxh, end(&sha256(b"hello"))), Code::DataLoss),
        // A right XXH3-128, where the upload asked for nothing (SHA-256).
        (upload(0, end_xxh3(&xxh3(b"hello"))), Code::DataLoss),
        // A digest nobody knows.
        (upload(7, end(&sha256(b"hello"))), Code::InvalidArgument),
    ];
    for (messages, code) in refused {
        let status = client
            .upload(tokio_stream::iter(messages))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(!remote.join("x.bin").exists(), "kept after {status:?}");
        assert!(temporaries(&remote).is_empty());
    }
    let result = client
        .upload(tokio_stream::iter(upload(xxh, end_xxh3(&xxh3(b"hello")))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((result.entries, result.bytes), (1, 5));
    assert_eq!(std::fs::read(remote.join("x.bin")).unwrap(), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_carries_the_digest_it_asked_for() {
    let (daemon, remote) = daemon_in("digest-down", &[]);
    let bytes = std::fs::read(random_file(&remote, "r.bin", (1 << 20) + 7)).unwrap();
    let client = files_client(&daemon).await;
    let ends = |digest: i32| {
        let mut client = client.clone();
        async move {
            let mut stream = client
                .download(DownloadRequest {
                    path: "r.bin".into(),
                    recursive: false,
                    digest,
                })
                .await?
                .into_inner();
            let mut ends: Vec<FileEnd> = Vec::new();
            while let Some(message) = stream.message().await? {
                if let Some(download_response::Event::End(end)) = message.event {
                    ends.push(end);
                }
            }
            Ok::<_, tonic::Status>(ends)
        }
    };
    let sha = ends(Digest::Sha256 as i32).await.unwrap();
    assert_eq!(sha.len(), 1);
    assert_eq!(sha[0].sha256.to_vec(), sha256(&bytes));
    assert!(sha[0].xxh3_128.is_empty());

    let xxh = ends(Digest::Xxh3128 as i32).await.unwrap();
    assert_eq!(xxh.len(), 1);
    assert_eq!(xxh[0].xxh3_128.to_vec(), xxh3(&bytes));
    assert!(xxh[0].sha256.is_empty());

    let status = ends(9).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("digest"), "{status:?}");
    // The connection is still good for the next call.
    assert_eq!(ends(0).await.unwrap().len(), 1);
}
