//! Query filters and reconcile against an allowlist.

use strongroom_audit::{
    Allowlist, Filter, KeyUri, Kind, MachineGrant, Outcome, PeerGrant, VerifyOptions, Violation,
    query, reconcile,
};
use uuid::Uuid;

use crate::common::{all_records, domain, key, write_log};

fn run(dir: &std::path::Path, f: &Filter) -> Vec<u64> {
    let mut v = Vec::new();
    query(dir, &key(), &VerifyOptions::default(), f, &mut |r, _| {
        v.push(r.seq);
    })
    .unwrap();
    v
}

#[test]
fn filters_by_user_key_resource_outcome_kind_and_time() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60, |_| {});
    let all: Vec<_> = all_records(dir.path())
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(all.len(), 60);

    let mut f = Filter::default();
    f.user = Some(Uuid::from_u128(2));
    assert_eq!(run(dir.path(), &f), vec![1, 14, 27, 40, 53]);

    let mut f = Filter::default();
    f.key = Some(KeyUri::new(&domain(), Uuid::from_u128(9000 + 33)));
    assert_eq!(run(dir.path(), &f), vec![33]);

    let mut f = Filter::default();
    f.resource = all[2].resource.clone();
    f.outcome = Some(Outcome::Denied);
    let got = run(dir.path(), &f);
    assert!(!got.is_empty());
    assert!(got.iter().all(|s| s % 3 == 2 && s % 7 == 3), "{got:?}");

    let mut f = Filter::default();
    f.kind = Some(Kind::Admin);
    assert_eq!(run(dir.path(), &f).len(), 12);

    let mut f = Filter::default();
    f.since_ms = Some(all[10].time);
    f.until_ms = Some(all[59].time + 1);
    let got = run(dir.path(), &f);
    assert!(got.contains(&10) && got.contains(&59));
    assert!(got.iter().all(|s| all[*s as usize].time >= all[10].time));
    f.until_ms = Some(all[10].time);
    assert!(!run(dir.path(), &f).contains(&10), "until is exclusive");
}

#[test]
fn reconcile_lists_machine_and_federation_accesses_outside_the_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60, |_| {});
    // Machines 77 and 78 read keys (kind machine, i % 5 == 3); peer.example.org
    // received keys (kind federation, i % 5 == 4).
    let allow: Allowlist = serde_json::from_value(serde_json::json!({
        "machines": [{ "machine": Uuid::from_u128(77) }],
        "peers": [{ "peer": "peer.example.org", "orgs": [Uuid::from_u128(1000)] }],
    }))
    .unwrap();
    let (_, findings) = reconcile(dir.path(), &key(), &VerifyOptions::default(), &allow).unwrap();
    assert!(!findings.is_empty());
    for f in &findings {
        assert_eq!(f.violation, Violation::UnknownMachine);
        assert_eq!(f.record.machine, Some(Uuid::from_u128(78)));
        assert_eq!(
            f.record.outcome,
            Outcome::Allowed,
            "denied accesses are not findings"
        );
    }
    let expected: Vec<u64> = (0..60)
        .filter(|i| i % 5 == 3 && i % 2 == 1 && i % 7 != 3)
        .collect();
    assert_eq!(findings.iter().map(|f| f.seq).collect::<Vec<_>>(), expected);

    // Without the peer grant, every allowed federation release is a finding.
    let mut no_peer = allow.clone();
    no_peer.peers.clear();
    no_peer.machines.push(MachineGrant {
        machine: Uuid::from_u128(78),
        resources: vec![],
        on_behalf_of: vec![],
    });
    let (_, findings) = reconcile(dir.path(), &key(), &VerifyOptions::default(), &no_peer).unwrap();
    assert!(
        findings
            .iter()
            .all(|f| f.violation == Violation::UnknownPeer)
    );
    assert_eq!(
        findings.len(),
        (0..60).filter(|i| i % 5 == 4 && i % 7 != 3).count()
    );

    // A peer grant limited to another org.
    let mut other_org = no_peer.clone();
    other_org.peers.push(PeerGrant {
        peer: "peer.example.org".parse().unwrap(),
        orgs: vec![Uuid::from_u128(1)],
    });
    let (_, findings) =
        reconcile(dir.path(), &key(), &VerifyOptions::default(), &other_org).unwrap();
    assert!(!findings.is_empty());
    assert!(
        findings
            .iter()
            .all(|f| f.violation == Violation::OrgNotAllowed)
    );
}
