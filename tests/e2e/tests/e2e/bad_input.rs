//! Bad input at the HTTP layer gets a clear 4xx, the server stays up, and nothing changes
//! (issue: Bad input). Each case is sent to a real `strongroom dev`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use strongroom_e2e::{DevServer, Session};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_and_change_nothing() {
    let server = DevServer::start(None, &[]).unwrap();
    let info = server.info.clone();
    let http = strongroom_e2e::http_client();
    let url = format!("{}/kms/messages", info.kms_url);
    let user = Uuid::new_v4();
    let s = Session::connect(&http, &info, user, "dev").await.unwrap();
    let created = s
        .call("create", "/keys", json!({"count": 1}))
        .await
        .unwrap();
    let res = s
        .call(
            "create",
            "/resources",
            json!({"keyUris": [created["keys"][0]["uri"]]}),
        )
        .await
        .unwrap();
    let resource_uri = res["resource"]["uri"].as_str().unwrap().to_owned();
    // The resource as the KMS has it: what must not change.
    let snapshot = || async {
        let v = s.call("retrieve", &resource_uri, json!({})).await.unwrap();
        v["resource"].to_string()
    };
    let before = snapshot().await;

    // A fresh connection per case: after a 413 the server closes the connection without
    // reading the body, which a pooled keep-alive connection would trip over.
    let raw = |body: Vec<u8>| {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let url = url.clone();
        async move {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"destination\": ".to_vec(), 400),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x7b], 400),
        ("wrong shape", br#"{"hello": "world"}"#.to_vec(), 400),
        (
            "unknown destination",
            json!({"destination": "kms://elsewhere", "kmsMessages": ["a.b.c.d.e"]})
                .to_string()
                .into_bytes(),
            404,
        ),
        (
            "no messages",
            json!({"destination": info.kms_cluster, "kmsMessages": []})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "oversized",
            {
                let big = "A".repeat(2 * 1024 * 1024);
                json!({"destination": info.kms_cluster, "kmsMessages": [big]})
                    .to_string()
                    .into_bytes()
            },
            413,
        ),
    ];
    for (name, body, want) in cases {
        let (status, body) = raw(body).await;
        assert_eq!(status, want, "{name}: got {status} {body}");
        if want != 413 {
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{name}: clear error text, got {body}"
            );
        }
    }

    // JOSE-level garbage: answered in-band with a signed 400, one answer per message.
    for garbage in ["a.b.c", "a.b.c.d.e", "....", "not jose", "a.b.c.d.e.f"] {
        let answers = strongroom_e2e::post_messages(&http, &info, vec![garbage.to_owned()])
            .await
            .unwrap();
        let body = s.kms.open(&answers[0]).unwrap();
        assert_eq!(body["status"], 400, "{garbage}: {body}");
    }
    // Unknown KMS method and URI on a good channel.
    let r = s.call("frobnicate", "/keys", json!({})).await.unwrap();
    assert_eq!(r["status"], 400);
    let r = s.call("retrieve", "/nowhere", json!({})).await.unwrap();
    assert_eq!(r["status"], 404);
    let r = s
        .call("create", "/keys", json!({"count": 100_000}))
        .await
        .unwrap();
    assert_eq!(r["status"], 400);

    // Unknown HTTP endpoints and methods.
    let get_status = |url: &str| {
        let request = http.get(url);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get_status(&format!("{}/nope", info.kms_url)).await, 404);
    assert_eq!(get_status(&url).await, 405);
    assert_eq!(
        get_status(&format!("{}/kms/not-a-uuid", info.kms_url)).await,
        400
    );

    // Still up, and nothing changed.
    assert_eq!(before, snapshot().await);
    assert_eq!(get_status(&format!("{}/healthz", info.kms_url)).await, 200);
    server.stop().unwrap();
}
