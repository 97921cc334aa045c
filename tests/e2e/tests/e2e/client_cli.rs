//! The `strongroom-client` CLI against `strongroom dev` and its core: two users with their
//! own `--home`, a room, a member, a message and a file; the state file is 0600 and holds no
//! plaintext; bad input is a clear error that changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use strongroom_e2e::World;
use uuid::Uuid;

fn cli(home: &Path, args: &[&str]) -> Output {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("strongroom-client"))
        .find(|p| p.is_file())
        .expect("strongroom-client binary (cargo build -p strongroom-client)");
    Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_talk_with_the_cli() {
    let w = World::start(None).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ha, hb) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let tag = Uuid::new_v4().simple().to_string();
    let (ea, eb) = (
        format!("alice-{tag}@acme.test"),
        format!("bob-{tag}@acme.test"),
    );
    w.admin.user(w.org, "Alice", &ea).await.unwrap();
    let bob = w.admin.user(w.org, "Bob", &eb).await.unwrap();
    let ca = w.ca_pem.to_string_lossy().into_owned();
    for (h, e) in [(&ha, &ea), (&hb, &eb)] {
        ok(&cli(
            h,
            &["login", "--core", &w.core_url, "--ca", &ca, "--email", e],
        ));
    }
    // The channel is kept in the state: two runs, one channel (no second handshake).
    let chan = |o: String| {
        o.lines()
            .find(|l| l.starts_with("channel "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        chan(ok(&cli(&ha, &["whoami"]))),
        chan(ok(&cli(&ha, &["whoami"])))
    );
    let mode = std::fs::metadata(ha.join("state.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let room = ok(&cli(&ha, &["create-room", "cli room"]))
        .trim()
        .to_owned();
    ok(&cli(&ha, &["add", &room, &bob.to_string()]));
    let text = format!("secret over the cli {tag}");
    ok(&cli(&ha, &["send", &room, &text]));
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, format!("file body {tag}")).unwrap();
    ok(&cli(&ha, &["send-file", &room, &file.to_string_lossy()]));

    let out = tmp.path().join("received");
    let read = ok(&cli(
        &hb,
        &["read", &room, "--save-files", &out.to_string_lossy()],
    ));
    assert!(read.contains(&text), "{read}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        format!("file body {tag}")
    );
    let rooms = ok(&cli(&hb, &["rooms"]));
    assert!(
        rooms.contains("cli room") && !rooms.contains("EXTERNAL"),
        "{rooms}"
    );
    for h in [&ha, &hb] {
        let s = std::fs::read_to_string(h.join("state.json")).unwrap();
        assert!(!s.contains(&text) && !s.contains("file body"));
    }

    // Bad input: a room I am not in, and a malformed room id: clear errors, state unchanged.
    let before = std::fs::read(hb.join("state.json")).unwrap();
    let o = cli(&hb, &["send", &Uuid::new_v4().to_string(), "x"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not_member"),
        "{o:?}"
    );
    let o = cli(&hb, &["send", "not-a-uuid", "x"]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(hb.join("state.json")).unwrap(), before);
}
