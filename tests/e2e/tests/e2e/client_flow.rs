//! The whole flow end to end (issue 3): `strongroom dev` starts core-sim and dials out to it
//! over pinned TLS; devices use the reference client (`strongroom-client`) against the core
//! only — login at its identity service, KMS requests through its relay (R3). Each test
//! fails if its property breaks:
//!
//! * the core learns nothing (R4, R6): no plaintext and no conversation key in anything it
//!   recorded or stored, by a scanner proven to find a planted sample;
//! * removal (R9, R10): the removed user cannot retrieve keys bound after the removal, the
//!   core refuses a remaining member's content under a pre-removal key, members rotate;
//! * dial-out through dev (R3): core-sim `kill -9`ed and restarted, traffic resumes;
//! * directory sync (R24): a deactivated user leaves every room, the next messages use new keys;
//! * external indicator (R25): a room with a user of another organization shows it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use strongroom_client::{CoreError, Item, KmsRefusal};
use strongroom_e2e::World;
use uuid::Uuid;

/// A distinctive plaintext (no accidental match in tokens or ciphertext).
fn secret_text(label: &str) -> String {
    format!(
        "{label} {} the launch code is in the vault",
        Uuid::new_v4().simple()
    )
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        if upper {
            let _ = write!(s, "{b:02X}");
        } else {
            let _ = write!(s, "{b:02x}");
        }
        s
    })
}

/// Every form in which `secret` could sit in the core's files: raw, hex (both cases),
/// base64url and standard base64, the latter at each of the 3 byte alignments (a secret
/// embedded in a larger encoded blob), with partial trailing groups dropped.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![
        secret.to_vec(),
        hex(secret, false).into_bytes(),
        hex(secret, true).into_bytes(),
    ];
    for shift in 0..3 {
        let tail = &secret[shift.min(secret.len())..];
        let whole = tail.len() / 3 * 3;
        if whole < 12 {
            continue;
        }
        out.push(URL_SAFE_NO_PAD.encode(&tail[..whole]).into_bytes());
        out.push(STANDARD.encode(&tail[..whole]).into_bytes());
    }
    out
}

/// Names of the `secrets` found in any file of `dir` (recursively), with the form's index.
fn scan(dir: &Path, secrets: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            for (name, secret) in secrets {
                for (i, f) in forms(secret).iter().enumerate() {
                    if bytes.windows(f.len()).any(|w| w == f.as_slice()) {
                        found.push(format!("{name} (form {i}) in {}", p.display()));
                    }
                }
            }
        }
    }
    found
}

fn is_core_error(e: &anyhow::Error, status: u16, code: &str) -> bool {
    e.downcast_ref::<CoreError>()
        .is_some_and(|c| c.status == status && c.code == code)
}

fn texts(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Message { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_learns_no_plaintext_and_no_key() {
    let w = World::start(None).await.unwrap();
    let mut alice = w.user(w.org, "Alice", "alice-laptop").await.unwrap();
    let mut bob = w.user(w.org, "Bob", "bob-phone").await.unwrap();
    let mut carol = w.user(w.org, "Carol", "carol-tablet").await.unwrap();

    let title = secret_text("title");
    let room = alice.create_room(&title).await.unwrap();
    alice.add_member(room, bob.user).await.unwrap();
    alice.add_member(room, carol.user).await.unwrap();
    let mut plaintexts = vec![title.clone()];
    for (i, who) in [&mut alice, &mut bob, &mut carol].into_iter().enumerate() {
        let t = secret_text(&format!("message {i}"));
        who.send(room, &t).await.unwrap();
        plaintexts.push(t);
    }
    let file = secret_text("file body").repeat(40).into_bytes();
    bob.send_file(room, "plan.txt", &file).await.unwrap();
    alice.remove_member(room, carol.user).await.unwrap();
    let after = secret_text("after removal");
    alice.send(room, &after).await.unwrap();
    plaintexts.push(after);

    // Everyone still in the room reads everything (so every key was used and fetched).
    let read = bob.read(room, Some(0)).await.unwrap();
    let got = texts(&read);
    for p in &plaintexts[1..] {
        assert!(got.contains(p), "bob did not read {p:?}: {got:?}");
    }
    assert!(
        read.iter()
            .any(|i| matches!(i, Item::File { data, .. } if *data == file))
    );
    assert_eq!(bob.room(room).await.unwrap().title, title);
    alice.read(room, Some(0)).await.unwrap();

    let mut secrets: Vec<(String, Vec<u8>)> = plaintexts
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("plaintext {i}"), p.clone().into_bytes()))
        .collect();
    secrets.push(("file".into(), file[..64].to_vec()));
    let mut keys = Vec::new();
    for c in [&alice, &bob, &carol] {
        for (uri, k) in c.cached_keys() {
            keys.push((format!("key {uri}"), k.to_vec()));
        }
    }
    assert!(
        keys.len() >= 4,
        "one key per device plus rotation: {}",
        keys.len()
    );
    secrets.extend(keys);

    let core_dir = w.server.info.core_state_dir.clone().unwrap();
    assert!(core_dir.join("recording.log").is_file());
    let found = scan(&core_dir, &secrets);
    assert!(found.is_empty(), "the core holds secrets: {found:#?}");

    // Nor does the appliance's audit log (issue 4, R14): no plaintext, no key, no token.
    let mut audit_secrets = secrets.clone();
    for c in [&alice, &bob, &carol] {
        let login = c.save().login;
        for t in ["core_token", "kms_token"] {
            let sig = login[t].as_str().unwrap().rsplit('.').next().unwrap();
            audit_secrets.push((format!("{t} signature"), sig.as_bytes().to_vec()));
        }
    }
    let audit_dir = w.server.info.state_dir.join("audit");
    assert!(std::fs::read_dir(&audit_dir).unwrap().count() > 0);
    let found = scan(&audit_dir, &audit_secrets);
    assert!(found.is_empty(), "the audit log holds secrets: {found:#?}");

    // The scanner would find them: plant each form of two secrets in a copy and scan again.
    let planted = tempfile::tempdir().unwrap();
    for (i, (_, s)) in [&secrets[0], secrets.last().unwrap()].iter().enumerate() {
        for (j, f) in forms(s).iter().enumerate() {
            let mut blob = b"{\"noise\":\"".to_vec();
            blob.extend_from_slice(f);
            blob.extend_from_slice(b"\"}");
            std::fs::write(planted.path().join(format!("{i}-{j}")), blob).unwrap();
        }
    }
    let hits = scan(
        planted.path(),
        &[secrets[0].clone(), secrets.last().unwrap().clone()],
    );
    let expected: usize = [&secrets[0], secrets.last().unwrap()]
        .iter()
        .map(|(_, s)| forms(s).len())
        .sum();
    assert!(
        hits.len() >= expected,
        "scanner missed planted forms: {hits:#?}"
    );
    // And a secret embedded at an odd offset inside a base64-encoded blob.
    let blob = STANDARD.encode([b"xy".as_slice(), &secrets[0].1, b"zz"].concat());
    std::fs::write(planted.path().join("embedded"), blob).unwrap();
    assert!(
        scan(planted.path(), &[secrets[0].clone()])
            .iter()
            .any(|h| h.contains("embedded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_read_on_and_the_others_rotate() {
    let w = World::start(None).await.unwrap();
    let mut alice = w.user(w.org, "Alice", "alice-laptop").await.unwrap();
    let mut bob = w.user(w.org, "Bob", "bob-phone").await.unwrap();
    let mut carol = w.user(w.org, "Carol", "carol-tablet").await.unwrap();
    let room = alice.create_room("plans").await.unwrap();
    alice.add_member(room, bob.user).await.unwrap();
    alice.add_member(room, carol.user).await.unwrap();
    alice.send(room, "before").await.unwrap();
    bob.send(room, "bob before").await.unwrap();
    assert_eq!(
        texts(&carol.read(room, None).await.unwrap()),
        ["before", "bob before"]
    );
    let bob_old = bob.my_key(room).unwrap().to_owned();
    let alice_old = alice.my_key(room).unwrap().to_owned();

    alice.remove_member(room, carol.user).await.unwrap();

    // The core refuses a remaining member's content under a pre-removal key (R9).
    let stale = bob.encrypt_with(&bob_old, b"stale").await.unwrap();
    let e = bob
        .core()
        .post(
            &format!("/rooms/{room}/messages"),
            &serde_json::json!({"content": stale}),
        )
        .await
        .unwrap_err();
    assert!(is_core_error(&e, 409, "rotation_required"), "{e:#}");

    // Members rotate and carry on: bob's client gets 409 (he has not read the removal
    // yet), binds a fresh key and retries; alice rotated when she removed carol.
    bob.send(room, "bob after").await.unwrap();
    alice.send(room, "after").await.unwrap();
    let bob_new = bob.my_key(room).unwrap().to_owned();
    let alice_new = alice.my_key(room).unwrap().to_owned();
    assert_ne!(bob_new, bob_old);
    assert_ne!(alice_new, alice_old);
    let read = bob.read(room, None).await.unwrap();
    assert!(texts(&read).contains(&"after".to_owned()), "{read:?}");
    assert!(read.iter().any(
        |i| matches!(i, Item::Event { kind, user, .. } if kind == "removed" && *user == carol.user)
    ));

    // The removed user: no room at the core, and the KMS refuses every key bound after the
    // removal (even with the URIs, e.g. from a leaked copy of the core's storage).
    let e = carol.read(room, Some(0)).await.unwrap_err();
    assert!(is_core_error(&e, 403, "not_member"), "{e:#}");
    carol.forget_keys();
    for k in [&bob_new, &alice_new] {
        let e = carol
            .key(k)
            .await
            .err()
            .expect("removed user retrieved a new key");
        let r = e.downcast_ref::<KmsRefusal>().expect("a KMS refusal");
        assert_eq!(r.status, 403, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_reconnects_to_a_restarted_core_by_itself() {
    let w = World::start(None).await.unwrap();
    let mut alice = w.user(w.org, "Alice", "alice-laptop").await.unwrap();
    let room = alice.create_room("ops").await.unwrap();
    alice.send(room, "before the crash").await.unwrap();

    let info = &w.server.info;
    std::process::Command::new("kill")
        .args(["-KILL", &info.core_pid.unwrap().to_string()])
        .status()
        .unwrap();
    // The relay is gone with the core.
    assert!(alice.relay(vec!["x.y.z".into()]).await.is_err());

    let cmd = &info.core_command;
    let mut restarted = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Nobody touches the appliance: it reconnects with backoff and KMS traffic through the
    // relay resumes (a key retrieve needs the realm; a cached key would not).
    let key = alice.my_key(room).unwrap().to_owned();
    let mut ok = false;
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        alice.forget_keys();
        if alice.key(&key).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "KMS traffic did not resume through the restarted core");
    alice.send(room, "after the restart").await.unwrap();
    alice.forget_keys();
    let items = alice.read(room, Some(0)).await.unwrap();
    assert_eq!(
        texts(&items),
        ["before the crash", "after the restart"],
        "{items:?}"
    );
    let _ = restarted.kill();
    let _ = restarted.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_user_leaves_every_room_and_keys_rotate() {
    let w = World::start(None).await.unwrap();
    let mut alice = w.user(w.org, "Alice", "alice-laptop").await.unwrap();
    let mut bob = w.user(w.org, "Bob", "bob-phone").await.unwrap();
    let mallory_email = format!("mallory-{}@example.test", Uuid::new_v4().simple());
    let mallory_id = w
        .admin
        .user(w.org, "Mallory", &mallory_email)
        .await
        .unwrap();
    let mut mallory = w.login(&mallory_email, "m-laptop").await.unwrap();
    let r1 = alice.create_room("one").await.unwrap();
    let r2 = bob.create_room("two").await.unwrap();
    for (c, r) in [(&mut alice, r1), (&mut bob, r2)] {
        c.add_member(r, mallory_id).await.unwrap();
        c.send(r, "hello").await.unwrap();
    }
    alice.add_member(r1, bob.user).await.unwrap();
    let old = (
        alice.my_key(r1).unwrap().to_owned(),
        bob.my_key(r2).unwrap().to_owned(),
    );

    let mut removed = w.admin.deactivate(mallory_id).await.unwrap();
    removed.sort();
    let mut expected = vec![r1, r2];
    expected.sort();
    assert_eq!(removed, expected);
    for (c, r) in [(&mut alice, r1), (&mut bob, r2)] {
        assert!(!c.room(r).await.unwrap().members.contains(&mallory_id));
        let items = c.read(r, Some(0)).await.unwrap();
        assert!(items.iter().any(|i| matches!(i, Item::Event { kind, user, directory_sync: true, .. } if kind == "removed" && *user == mallory_id)), "{items:?}");
        c.send(r, "after directory sync").await.unwrap();
    }
    assert_ne!(alice.my_key(r1).unwrap(), old.0);
    assert_ne!(bob.my_key(r2).unwrap(), old.1);
    let e = w.login(&mallory_email, "again").await.unwrap_err();
    assert!(
        is_core_error(&e, 403, "deactivated")
            || e.downcast_ref::<CoreError>()
                .is_some_and(|c| c.status == 403),
        "{e:#}"
    );
    // Her still-valid KMS token does not open the new keys either.
    mallory.forget_keys();
    let new_key = alice.my_key(r1).unwrap().to_owned();
    assert!(
        mallory.key(&new_key).await.is_err(),
        "a deactivated user retrieved a new key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_with_another_organization_shows_external() {
    let w = World::start(None).await.unwrap();
    // The other organization's KMS is the same dev appliance (one KMS is enough here): its
    // users log in, get KMS tokens for it, and the core tells orgs apart by org id.
    let other = w
        .admin
        .org("Globex", &w.server.info.kms_cluster)
        .await
        .unwrap();
    let mut alice = w.user(w.org, "Alice", "alice-laptop").await.unwrap();
    let mut bob = w.user(w.org, "Bob", "bob-phone").await.unwrap();
    let mut dave = w.user(other, "Dave", "dave-laptop").await.unwrap();
    let room = alice.create_room("partners").await.unwrap();
    alice.add_member(room, bob.user).await.unwrap();
    assert!(!alice.room(room).await.unwrap().external);
    alice.add_member(room, dave.user).await.unwrap();
    assert!(alice.room(room).await.unwrap().external);
    assert!(bob.room(room).await.unwrap().external);
    let d = dave.room(room).await.unwrap();
    assert!(d.external);
    assert_eq!(d.title, "partners");
    alice.remove_member(room, dave.user).await.unwrap();
    assert!(!bob.room(room).await.unwrap().external);
}
