//! The multi-Raft core must stay sans-IO so a deterministic simulator can drive it: no tokio,
//! libp2p or sled anywhere under `node/src/core`.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read core dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn node_core_imports_no_tokio_libp2p_or_sled() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(
        files.len() >= 5,
        "core sources not found under {}",
        core.display()
    );
    let forbidden = [
        "tokio",
        "libp2p",
        "sled",
        "swarmkv_net",
        "std::net",
        "std::thread",
    ];
    let mut offences = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                let hit = code.match_indices(word).any(|(i, _)| {
                    let before = code[..i].chars().last();
                    let after = code[i + word.len()..].chars().next();
                    let ident =
                        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    !ident(before) && !ident(after)
                });
                if hit {
                    offences.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "node/src/core must stay sans-IO:\n{}",
        offences.join("\n")
    );
}
