use clap::Parser;

// glibc's allocator returns the large per-step activation buffers to the kernel and faults
// them back in on every step; mimalloc keeps them, which roughly halves system time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = pretext::cli::Cli::parse();
    if let Err(e) = pretext::cli::main_with(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
