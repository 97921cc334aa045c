//! `RedbStore::snapshot` and `count_keys` (backup and status): refused while another
//! handle holds the database, a byte copy of a consistent file otherwise.

use strongroom_kms::storage::{RedbStore, StorageError, Store as _, StoredKey, Write};
use uuid::Uuid;

#[tokio::test]
async fn snapshot_is_refused_while_the_store_is_open_and_copies_it_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let store = RedbStore::open(&path, 1 << 20).unwrap();
    let key = StoredKey {
        id: Uuid::new_v4(),
        user: Uuid::new_v4(),
        client_id: "c".into(),
        created_ms: 1,
        expires_ms: i64::MAX,
        resource: None,
        bound_ms: None,
        sealed: vec![0; 60],
    };
    store.apply(vec![Write::PutKeys(vec![key])]).await.unwrap();
    assert!(matches!(
        RedbStore::snapshot(&path),
        Err(StorageError::InUse)
    ));
    assert!(matches!(
        RedbStore::count_keys(&path),
        Err(StorageError::InUse)
    ));
    drop(store);
    assert_eq!(RedbStore::count_keys(&path).unwrap(), 1);
    let snap = RedbStore::snapshot(&path).unwrap();
    assert_eq!(snap.keys, 1);
    let copy = dir.path().join("copy.redb");
    std::fs::write(&copy, &snap.bytes).unwrap();
    assert_eq!(
        RedbStore::count_keys(&copy).unwrap(),
        1,
        "the copy is a usable database"
    );
    assert!(RedbStore::snapshot(&dir.path().join("missing.redb")).is_err());
}
