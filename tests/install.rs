//! Installing never disturbs a running server: `make test` installs through .ci/bin/sudo
//! (pgrx's test runner runs `sudo cp BUILD INSTALLED`), which replaces the library by
//! rename. A server with eventq preloaded and its worker busy keeps serving while a
//! different build is installed that way.

mod common;

use common::{column, wait_for, Cluster, PRELOAD};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn pkglibdir() -> PathBuf {
    let out = Command::new(std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into()))
        .arg("--pkglibdir")
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Installs `src` over `dest` the way `make test` does.
fn install_like_make_test(src: &Path, dest: &Path) {
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/bin/sudo");
    let status = Command::new(shim).arg("cp").arg(src).arg(dest).status().unwrap();
    assert!(status.success());
}

#[test]
fn installing_a_build_leaves_a_running_server_serving() {
    let cluster = Arc::new(Cluster::start("install", &[PRELOAD]));
    let mut db = cluster.connect();
    db.batch_execute("SELECT eventq.create_stream('s'); SELECT eventq.create_consumer('c', 's')")
        .unwrap();
    let worker = |db: &mut postgres::Client| -> i32 {
        db.query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventq worker'", &[])
            .unwrap()
            .get(0)
    };
    let pid = wait_for("the worker", Duration::from_secs(10), || {
        db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventq worker'", &[])
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
            .ok_or_else(|| "no worker".to_string())
    });
    // keep the worker busy while the library is replaced
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        thread::spawn(move || {
            let mut db = cluster.connect();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                db.batch_execute("SELECT eventq.publish('s', 'busy')").unwrap();
                n += 1;
            }
            n
        })
    };
    let library = pkglibdir().join("eventq.so");
    let original = cluster.dir.join("eventq.so.original");
    std::fs::copy(&library, &original).unwrap();
    let different = cluster.dir.join("eventq.so.different");
    let mut bytes = std::fs::read(&library).unwrap();
    bytes.extend_from_slice(b"a different build");
    std::fs::write(&different, bytes).unwrap();
    thread::sleep(Duration::from_millis(300));
    install_like_make_test(&different, &library);
    thread::sleep(Duration::from_millis(500));
    install_like_make_test(&original, &library);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let published = busy.join().unwrap();
    assert!(published > 0);
    // the same worker, still draining; the server never restarted
    assert_eq!(worker(&mut db), pid);
    db.batch_execute("SELECT eventq.publish('s', 'after')").unwrap();
    wait_for("everything drained", Duration::from_secs(10), || {
        let n: i64 = db.query_one("SELECT count(*) FROM eventq.events", &[]).unwrap().get(0);
        if n == published + 1 {
            Ok(())
        } else {
            Err(format!("{n} of {}", published + 1))
        }
    });
    assert_eq!(
        column(&mut db, "SELECT subject FROM eventq.events ORDER BY seq DESC LIMIT 1"),
        ["after"]
    );
    let log = cluster.log();
    assert!(!log.contains("terminated by signal"), "{log}");
    assert!(!log.contains("server process") || !log.contains("was terminated"), "{log}");
}
