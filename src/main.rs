use clap::Parser;

// glibc's allocator returns the large per-step activation buffers to the kernel and faults
// them back in on every step; mimalloc keeps them, which roughly halves system time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
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
