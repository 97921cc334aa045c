//! `kill -9` during a stream of key creations: after a restart on the same state directory
//! every key the KMS acknowledged is retrievable and byte-identical (issue: Durability).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use serde_json::json;
use strongroom_e2e::{DevServer, Session};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_keys_survive_kill_9() {
    let state = tempfile::tempdir().unwrap();
    let http = strongroom_e2e::http_client();
    let user = Uuid::new_v4();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();

    for round in 0..3 {
        let server = DevServer::start(Some(state.path()), &[]).unwrap();
        let info = server.info.clone();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let (http, info, acked) = (http.clone(), info.clone(), Arc::clone(&acked));
            tasks.push(tokio::spawn(async move {
                let s = Session::connect(&http, &info, user, &format!("dev-{round}-{w}")).await?;
                loop {
                    let r = s.call("create", "/keys", json!({"count": 3})).await?;
                    if r["status"] != 201 {
                        anyhow::bail!("unexpected answer {r}");
                    }
                    let mut a = acked.lock().unwrap();
                    for k in r["keys"].as_array().unwrap() {
                        a.push((
                            k["uri"].as_str().unwrap().into(),
                            k["jwk"]["k"].as_str().unwrap().into(),
                        ));
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            }));
        }
        // Let the writers run, then pull the plug mid-stream.
        tokio::time::sleep(std::time::Duration::from_millis(700 + 300 * round)).await;
        server.kill9().unwrap();
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.is_err(), "writers stop only because the server died");
        }
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the test must actually create keys (got {})",
        acked.len()
    );
    let server = DevServer::start(Some(state.path()), &[]).unwrap();
    let s = Session::connect(&http, &server.info, user, "checker")
        .await
        .unwrap();
    for (uri, k) in &acked {
        let r = s.call("retrieve", uri, json!({})).await.unwrap();
        assert_eq!(r["status"], 200, "acknowledged key lost: {uri}");
        assert_eq!(r["key"]["jwk"]["k"], k.as_str(), "key bytes changed: {uri}");
    }
    server.stop().unwrap();
}

/// `kill -9` of `strongroom dev` gives it no chance to stop the core-sim it started; the
/// core must notice (`--exit-with`) and go, or every crash test would leak a core.
#[test]
fn the_core_sim_of_a_killed_dev_goes_too() {
    let state = tempfile::tempdir().unwrap();
    let dev = DevServer::start(Some(state.path()), &[]).unwrap();
    let core = dev.info.core_pid.expect("dev started a core-sim");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &dev.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let proc_dir = std::path::PathBuf::from(format!("/proc/{core}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_mins(1);
    // The core-sim is our grandchild: once dev is gone it is reparented and reaped by
    // init (or a subreaper), so its /proc entry disappears.
    while proc_dir.exists() && !is_zombie(core) {
        assert!(
            std::time::Instant::now() < deadline,
            "core-sim {core} still runs a minute after dev was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(dev);
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}
