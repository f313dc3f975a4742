use clap::Parser;

// glibc's allocator returns the large per-step activation buffers to the kernel and faults
// them back in on every step; mimalloc keeps them, which roughly halves system time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    // mimalloc's own C API (linked in by the `mimalloc` crate).
    fn mi_option_set_default(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (include/mimalloc.h of
/// libmimalloc-sys 0.1.49, which Cargo.toml pins through `mimalloc = "=0.1.52"`).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Never hand freed memory back to the kernel. By default mimalloc purges free pages after a
/// delay (1 s in mimalloc v3); a training step frees its activations and gradients and
/// allocates them again one step later, so they were purged and faulted back in, zeroed by
/// the kernel, on every step: a quarter of all CPU time went to the kernel (measured in
/// BENCHMARKS.md). The process now holds its high-water mark, which it reaches on every step
/// anyway. `MIMALLOC_PURGE_DELAY=N` in the environment still overrides this.
fn keep_freed_memory() {
    // SAFETY: a plain call into the allocator's option table with a valid option index and
    // value (-1: no purging); it reads and writes only mimalloc's own state.
    unsafe { mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() {
    keep_freed_memory();
    let cli = pretext::cli::Cli::parse();
    on_interrupt(cli.command.resume_hint());
    if let Err(e) = pretext::cli::main_with(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// SIGINT and SIGTERM end the process at once, as before (checkpoints, caches and stores are
/// written whole and renamed, so a stop anywhere loses only unfinished work), but with a
/// line saying how to continue and the conventional status 128 + signal (130, 143), never
/// one that could pass for success.
fn on_interrupt(hint: &'static str) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
            eprintln!("\ninterrupted ({name}); {hint}");
            std::process::exit(128 + sig);
        }
    });
}
