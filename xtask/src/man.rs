//! `cargo xtask man`: the `vm-accel` man pages, rendered from the CLI's clap definition
//! (one page for the command and one per subcommand, as `git` ships them).

use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the pages (vm-accel.1, vm-accel-list.1, ...).
    #[arg(long, default_value = "target/man")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pages = generate(&args.out)?;
    for p in &pages {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes every page into `dir`; returns their paths.
pub fn generate(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    clap_mangen::generate_to(vm_accel::cli::command(), dir)
        .with_context(|| format!("write man pages to {}", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    #[test]
    fn man_pages_cover_the_command_and_its_subcommands() {
        let dir = std::env::temp_dir().join(format!("vm-accel-man-{}", std::process::id()));
        let pages = super::generate(&dir).expect("generate");
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "vm-accel.1",
            "vm-accel-list.1",
            "vm-accel-bind.1",
            "vm-accel-completions.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let main = std::fs::read_to_string(dir.join("vm-accel.1")).expect("read");
        assert!(
            main.starts_with(".ie") || main.contains(".TH vm-accel"),
            "not roff"
        );
        assert!(main.contains("sysfs\\-root"), "--sysfs-root missing");
        std::fs::remove_dir_all(&dir).ok();
    }
}
