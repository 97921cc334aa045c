use axum::http::StatusCode;
use serde_json::json;

use crate::common::{Sim, kid};

#[tokio::test]
async fn non_members_are_refused_and_content_must_be_a_jwe() {
    let sim = Sim::new();
    let a = sim.org("A", "a.test").await;
    let alice = sim.user(a, "Alice", "alice@a.test").await;
    let eve = sim.user(a, "Eve", "eve@a.test").await;
    let room = sim.room(&alice, "a.test").await;
    let k = kid("a.test");

    assert_eq!(sim.send(&eve, room, &k).await.0, StatusCode::FORBIDDEN);
    for (m, uri, body) in [
        ("GET", format!("/rooms/{room}"), None),
        ("GET", format!("/rooms/{room}/messages"), None),
        (
            "POST",
            format!("/rooms/{room}/files"),
            Some(json!({"content": core_sim::model::jwe::fake_jwe(&k, b"f")})),
        ),
        (
            "POST",
            format!("/rooms/{room}/members"),
            Some(json!({"user_id": eve.user})),
        ),
        (
            "DELETE",
            format!("/rooms/{room}/members/{}", alice.user),
            None,
        ),
    ] {
        let (s, v) = sim.call(m, &uri, Some(&eve.core), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {uri}: {v}");
    }

    for bad in [
        "hello in plaintext",
        "a.b.c",
        "eyJhbGciOiJkaXIifQ..AAAA.AAAA.AAAA",
    ] {
        let (s, v) = sim
            .call(
                "POST",
                &format!("/rooms/{room}/messages"),
                Some(&alice.core),
                Some(json!({"content": bad})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"], "not_jwe");
    }
    let (s, _) = sim
        .call(
            "POST",
            "/rooms",
            Some(&alice.core),
            Some(json!({"resource_uri": "kms://a.test/r", "title": "plain title"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, v) = sim.send(&alice, room, &k).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = sim
        .call(
            "POST",
            &format!("/rooms/{room}/files"),
            Some(&alice.core),
            Some(json!({"content": core_sim::model::jwe::fake_jwe(&k, b"file")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = sim
        .call(
            "GET",
            &format!("/rooms/{room}/messages?after=0"),
            Some(&alice.core),
            None,
        )
        .await;
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["kind"], "message");
    assert_eq!(msgs[1]["kind"], "file");
    assert_eq!(msgs[0]["kid"], k);
    let after = msgs[0]["seq"].as_u64().unwrap();
    let (_, v) = sim
        .call(
            "GET",
            &format!("/rooms/{room}/messages?after={after}"),
            Some(&alice.core),
            None,
        )
        .await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    assert_eq!(v["events"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_key_seen_before_a_removal_is_refused_after_it_and_a_new_key_is_accepted() {
    let sim = Sim::new();
    let a = sim.org("A", "a.test").await;
    let alice = sim.user(a, "Alice", "alice@a.test").await;
    let anne = sim.user(a, "Anne", "anne@a.test").await;
    let carl = sim.user(a, "Carl", "carl@a.test").await;
    let room = sim.room(&alice, "a.test").await;
    assert_eq!(sim.add(&alice, room, anne.user), StatusCode::OK);
    assert_eq!(sim.add(&alice, room, carl.user), StatusCode::OK);
    let old = kid("a.test");
    let anne_old = kid("a.test");
    assert_eq!(sim.send(&alice, room, &old).await.0, StatusCode::OK);
    assert_eq!(sim.send(&anne, room, &anne_old).await.0, StatusCode::OK);
    // Still fine before any removal.
    assert_eq!(sim.send(&alice, room, &old).await.0, StatusCode::OK);

    let (s, v) = sim.remove(&alice, room, carl.user);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["event"]["kind"], "removed");
    assert_eq!(v["event"]["actor"], alice.user.to_string());

    for (who, k) in [(&alice, &old), (&anne, &anne_old)] {
        let (s, v) = sim.send(who, room, k).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"], "rotation_required");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(k.as_str()) && msg.contains("predates the last membership removal"),
            "{msg}"
        );
    }
    let fresh = kid("a.test");
    assert_eq!(sim.send(&alice, room, &fresh).await.0, StatusCode::OK);
    assert_eq!(sim.send(&anne, room, &fresh).await.0, StatusCode::OK);
    // The removed user is out.
    assert_eq!(sim.send(&carl, room, &fresh).await.0, StatusCode::FORBIDDEN);

    // A leave is a rotation point too.
    let (s, v) = sim.remove(&anne, room, anne.user);
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["event"]["kind"], "leave");
    assert_eq!(sim.send(&alice, room, &fresh).await.0, StatusCode::CONFLICT);
    assert_eq!(
        sim.send(&alice, room, &kid("a.test")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_external_flag_flips_when_another_org_joins_and_events_are_inline() {
    let sim = Sim::new();
    let a = sim.org("A", "a.test").await;
    let b = sim.org("B", "b.test").await;
    let alice = sim.user(a, "Alice", "alice@a.test").await;
    let anne = sim.user(a, "Anne", "anne@a.test").await;
    let bob = sim.user(b, "Bob", "bob@b.test").await;
    let room = sim.room(&alice, "a.test").await;
    let uri = format!("/rooms/{room}");
    let show = || sim.call("GET", &uri, Some(&alice.core), None);

    assert_eq!(show().await.1["external"], false);
    assert_eq!(sim.add(&alice, room, anne.user), StatusCode::OK);
    assert_eq!(show().await.1["external"], false);
    assert_eq!(sim.add(&alice, room, bob.user), StatusCode::OK);
    assert_eq!(show().await.1["external"], true);
    assert_eq!(sim.add(&alice, room, bob.user), StatusCode::CONFLICT);
    let (s, _) = sim.remove(&bob, room, bob.user);
    assert_eq!(s, StatusCode::OK);
    let (_, v) = show().await;
    assert_eq!(v["external"], false);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["join", "join", "join", "leave"]);
    assert!(v["events"][2]["at_ms"].as_i64().unwrap() > 0);
    assert_eq!(v["events"][2]["actor"], alice.user.to_string());
    assert_eq!(
        v["title"]["content"].as_str().unwrap().split('.').count(),
        5
    );
}
