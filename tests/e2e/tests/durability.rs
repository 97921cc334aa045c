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
