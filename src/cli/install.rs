//! What installing Strata needs from the binary itself: shell completions and man pages, both
//! generated from the clap definitions so they always match the code.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::Cli;

/// `strata completions SHELL`: the completion script on standard output.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "strata", &mut std::io::stdout());
    Ok(())
}

/// `strata man DIR`: `strata.1` and one `strata-COMMAND.1` per command, into DIR.
pub(super) fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("strata".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("strata-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
