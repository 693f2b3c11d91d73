//! A store that lost writes it had made durable is refused at open (`durable_mark`), with an
//! error naming the store's path, the mark's path and both sequences; stores that lost
//! nothing open as before, including stores written before the mark existed. One test kills a
//! child process (this binary run again with only `lost_writes_child` selected) to show that
//! the marks written while the store runs catch a loss after a crash, without the final mark
//! of a clean close.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use swarmkv_store::durable_mark::{mark_path, read_mark, SEQ_KEY};
use swarmkv_store::raft::Storage;
use swarmkv_store::{ApplyEntry, ApplyOp, LogBatch, SledStore, Store, StoreConfig, StoreError};

/// A store in `dir/store`, so that its mark (beside it) stays inside the temporary directory.
fn store_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store")
}

fn open(path: &Path) -> Result<SledStore, StoreError> {
    // sled's background threads may hold the directory lock for a moment after a close.
    let mut attempt = 0;
    loop {
        match Store::open(path, StoreConfig::default()) {
            Err(StoreError::Engine { message, .. }) if attempt < 50 => {
                eprintln!("open attempt {attempt}: {message}");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Appends entries `from..=to` to group 1, one synced batch each, and applies each (a put),
/// flushing the state to sled: sled's syncs are what the durable mark follows.
fn append(store: &SledStore, from: u64, to: u64) -> Result<()> {
    for i in from..=to {
        let mut b = LogBatch::new();
        b.append(1, vec![entry_with_data(i, 1, &[i as u8; 300])]);
        store.commit(&b)?;
        let op = put(&format!("k{i}"), "v");
        store.apply(
            1,
            &[ApplyEntry {
                index: i,
                term: 1,
                op: ApplyOp::Kv(&op),
            }],
        )?;
        store.flush_state()?;
    }
    Ok(())
}

fn last_index(store: &SledStore) -> Result<u64> {
    Ok(store.group(1)?.last_index()?)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Checks that `err` is the lost-writes error for `path`, and that its message says where
/// and what to do.
fn assert_lost_writes(err: StoreError, path: &Path) -> Result<(u64, u64)> {
    let message = err.to_string();
    println!("refused: {message}");
    assert!(err.is_damage(), "{message}");
    let StoreError::LostWrites {
        path: found_path,
        mark,
        expected,
        found,
    } = err
    else {
        bail!("expected LostWrites, got {message}");
    };
    assert_eq!(found_path, path);
    assert_eq!(mark, mark_path(path));
    assert!(found < expected, "{found} < {expected}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("swarmkv repair --from-peers"), "{message}");
    Ok((expected, found))
}

#[test]
fn an_older_copy_of_the_store_put_back_is_refused_naming_the_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = store_dir(&dir);
    let old = dir.path().join("older-copy");
    {
        let store = open(&path)?;
        append(&store, 1, 20)?;
    }
    copy_dir(&path, &old)?;
    {
        let store = open(&path)?;
        assert_eq!(last_index(&store)?, 20);
        append(&store, 21, 40)?;
    }
    std::fs::remove_dir_all(&path)?;
    std::fs::rename(&old, &path)?;
    let err = match open(&path) {
        Err(e) => e,
        Ok(s) => bail!(
            "the older copy opened, with last index {} of 40",
            last_index(&s)?
        ),
    };
    let (expected, found) = assert_lost_writes(err, &path)?;
    println!("mark {expected}, store {found}");
    // Refusing changed nothing: the same open refuses again.
    assert!(matches!(open(&path), Err(StoreError::LostWrites { .. })));
    Ok(())
}

#[test]
fn a_store_deleted_beside_its_mark_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = store_dir(&dir);
    {
        let store = open(&path)?;
        append(&store, 1, 5)?;
    }
    std::fs::remove_dir_all(&path)?;
    let err = match open(&path) {
        Err(e) => e,
        Ok(_) => bail!("an empty store opened under the mark of a store that had data"),
    };
    let (_, found) = assert_lost_writes(err, &path)?;
    assert_eq!(found, 0);
    Ok(())
}

#[test]
fn a_truncated_log_is_refused_not_silently_shortened() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = store_dir(&dir);
    {
        let store = open(&path)?;
        append(&store, 1, 300)?;
    }
    let db = path.join("db");
    let len = std::fs::metadata(&db)?.len();
    // Cut the log file in the middle, as a lost tail would.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)?
        .set_len(len / 2)?;
    match open(&path) {
        Err(e) => {
            println!("truncated log ({len} -> {} bytes) refused: {e}", len / 2);
            assert!(e.is_damage(), "{e}");
        }
        Ok(s) => bail!(
            "a log truncated to half opened silently, last index {} of 300",
            last_index(&s)?
        ),
    }
    Ok(())
}

#[test]
fn a_missing_mark_on_an_existing_store_is_created_without_refusing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = store_dir(&dir);
    {
        let store = open(&path)?;
        append(&store, 1, 5)?;
    }
    // A store written before the mark existed: no sequence in sled, no mark file.
    {
        let db = sled::open(&path)?;
        db.open_tree("meta")?.remove(SEQ_KEY)?;
        db.flush()?;
    }
    std::fs::remove_file(mark_path(&path))?;
    {
        let store = open(&path).context("a store without a mark (first start after upgrade)")?;
        assert_eq!(last_index(&store)?, 5);
    }
    let mark = read_mark(&mark_path(&path))?.context("the mark was not created")?;
    assert!(mark >= 1, "mark {mark}");
    // From now on the store is covered: deleting it is refused.
    std::fs::remove_dir_all(&path)?;
    assert!(matches!(open(&path), Err(StoreError::LostWrites { .. })));
    Ok(())
}

#[test]
fn the_mark_follows_the_syncs_of_an_open_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = store_dir(&dir);
    let store = open(&path)?;
    let first = read_mark(&mark_path(&path))?.context("no mark after open")?;
    // Write for a while: the background keeper marks a newer sequence about once a second.
    let started = Instant::now();
    let mut next = 1;
    let mut latest = first;
    while started.elapsed() < Duration::from_secs(30) {
        append(&store, next, next + 9)?;
        next += 10;
        latest = read_mark(&mark_path(&path))?.context("the mark disappeared")?;
        if latest >= first + 2 && started.elapsed() > Duration::from_millis(2100) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "mark moved from {first} to {latest} in {:?} ({} entries)",
        started.elapsed(),
        next - 1
    );
    assert!(
        latest >= first + 2,
        "the mark did not move: {first} -> {latest}"
    );
    // The mark never claims more than the store holds: a clean reopen accepts it.
    drop(store);
    let store = open(&path)?;
    assert_eq!(last_index(&store)?, next - 1);
    Ok(())
}

/// Set in the child's environment: the store directory it writes to until it is killed.
const CHILD_ENV: &str = "SWARMKV_LOST_WRITES_CHILD";

/// The child of [`a_log_cut_after_a_kill_is_refused_by_the_marks_of_the_running_store`]: appends
/// to group 1 of the store in `$SWARMKV_LOST_WRITES_CHILD` until killed (returns at once in a
/// normal test run).
#[test]
fn lost_writes_child() -> Result<()> {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    let store = open(Path::new(&dir))?;
    let mut next = last_index(&store)? + 1;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        append(&store, next, next)?;
        next += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Kills the child when dropped, so that a failing test leaves no process behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A crash (SIGKILL, so no final mark) followed by a log that lost its tail: the marks the
/// running store wrote in the background are enough to refuse it. The log is cut at its length
/// when the mark reached its second value, before the next sequence write, which the final
/// mark records.
#[test]
fn a_log_cut_after_a_kill_is_refused_by_the_marks_of_the_running_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = store_dir(&dir);
    let mark = mark_path(&path);
    let mut child = Child(
        std::process::Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "lost_writes_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let poll = |what: &str, check: &mut dyn FnMut() -> Result<bool>| -> Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        while !check()? {
            if Instant::now() > until {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    poll("the child's first mark", &mut || {
        Ok(read_mark(&mark).ok().flatten().is_some())
    })?;
    let first = read_mark(&mark)?.context("no mark")?;
    // The keeper's first own mark: its sequence is durable; the next one is written at least
    // a second later. The log's length now is before that next sequence write.
    poll("the keeper's first mark", &mut || {
        Ok(read_mark(&mark)?.is_some_and(|m| m > first))
    })?;
    let cut = std::fs::metadata(path.join("db"))?.len();
    let second = read_mark(&mark)?.context("no mark")?;
    poll("the keeper's next mark", &mut || {
        Ok(read_mark(&mark)?.is_some_and(|m| m > second))
    })?;
    let last = read_mark(&mark)?.context("no mark")?;
    child.0.kill()?;
    child.0.wait()?;
    let len = std::fs::metadata(path.join("db"))?.len();
    println!("marks {first} -> {second} -> {last}; log {len} bytes, cut to {cut}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("db"))?
        .set_len(cut)?;
    match open(&path) {
        Err(StoreError::LostWrites {
            expected, found, ..
        }) => {
            println!("refused: mark {expected}, store {found}");
            assert_eq!(expected, last);
            assert!(found < last);
        }
        Err(e) => {
            println!("refused: {e}");
            assert!(e.is_damage(), "{e}");
        }
        Ok(s) => bail!(
            "a log cut after a crash opened silently, last index {}",
            last_index(&s)?
        ),
    }
    Ok(())
}
