//! The `strata` command: parses arguments and hands them to the library; see `cli/`.

mod cli;

fn main() {
    // Output into a closed pipe (`strata stats | head`) ends the process quietly, as for any
    // Unix tool, instead of a panic in println!.
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
