//! The `swarmkv` command line: `swarmkv start` runs a node; the other verbs are clients that
//! talk to a running node, over its HTTP gateway or over libp2p. The commands themselves
//! live in [`cli`], one file each; this file only parses, sets up logging and maps errors to
//! the exit status (0 done, 1 not found / compare failed / refused, 2 usage, 3 unavailable).

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// glibc's allocator took about 15% of a busy node's CPU (perf, put with 64 clients), much of
/// it in consolidating and unlinking free chunks across threads; mimalloc's per-thread heaps
/// do that work at a fraction of the cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on its arenas (`madvise`), so each first touch of
/// a fresh 2 MiB of heap made the kernel zero all of it in one page fault: 3-5 % of a busy
/// node's CPU samples, in bursts that stalled whichever thread touched the page. Without them
/// (this process only; the kernel checks the flag at every fault, so arenas mimalloc mapped
/// before `main` are covered too), puts at 64 clients had 0.89x the p99 (lower in 13 of 14
/// alternating pairs) at 0.97x the CPU and the same throughput (docs/benchmarks.md).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and sets a flag of this process. A
    // kernel without it answers EINVAL, which changes nothing: huge pages stay allowed.
    // The arguments are unsigned longs: prctl is variadic, and an int would leave the upper
    // halves of the registers undefined, which the kernel refuses.
    unsafe {
        let (yes, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, yes, zero, zero, zero);
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    // clap prints its own message and exits 2 on a bad argument (and 0 for --help/--version).
    let args = cli::Cli::parse();
    init_logging(args.command.is_node());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.command.worker_threads() {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(args.command.run()) {
        Ok(code) => code,
        Err(e) => {
            // One line, whatever the cause: "error: get \"k\": cannot connect to ...".
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A node logs what it does at `info`; a client verb stays quiet unless something is wrong,
/// because its stderr is read by a person (or a script) waiting for one answer. `RUST_LOG`
/// overrides both.
fn init_logging(node: bool) {
    let default = if node {
        "warn,swarmkv=info,swarmkv_net=info,swarmkv_store=info"
    } else {
        "warn,swarmkv=warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}
