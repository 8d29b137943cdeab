//! `--reload`: watch the app's files and tell the supervisor when one of
//! interest changed.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::ReloadConfig;

/// Names never watched: hidden files and folders, bytecode, editor backups
/// and swap files, and Python's cache folders.
const ALWAYS_EXCLUDED: &[&str] = &[".*", "*.py[cod]", "*~", "__pycache__", "*.sw?"];

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid --reload-include or --reload-exclude pattern: {0}")]
    Pattern(#[from] globset::Error),
    #[error("could not watch {path:?} for --reload: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Decides which changed paths matter.
#[derive(Debug)]
struct PathFilter {
    include: GlobSet,
    exclude: GlobSet,
}

impl PathFilter {
    fn new(config: &ReloadConfig) -> Result<Self, globset::Error> {
        let build = |patterns: &mut dyn Iterator<Item = &str>| {
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                builder.add(Glob::new(pattern)?);
            }
            builder.build()
        };
        let include = build(&mut config.include.iter().map(String::as_str))?;
        let mut excluded = ALWAYS_EXCLUDED
            .iter()
            .copied()
            .chain(config.exclude.iter().map(String::as_str));
        let exclude = build(&mut excluded)?;
        Ok(Self { include, exclude })
    }

    /// Whether a change to `path` (below `root`) should restart the worker:
    /// its file name matches an include pattern and no component of the
    /// path below `root` matches an exclude pattern.
    fn matches(&self, root: &Path, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return false;
        };
        if !self.include.is_match(name) {
            return false;
        }
        let relative = path.strip_prefix(root).unwrap_or(path);
        !relative
            .components()
            .any(|part| self.exclude.is_match(part.as_os_str()))
    }
}

/// Watches the configured folders; the returned watcher must be kept alive.
/// Each relevant change sends its path on `changes`.
pub fn watch(
    config: &ReloadConfig,
    changes: mpsc::UnboundedSender<PathBuf>,
) -> Result<RecommendedWatcher, ReloadError> {
    let filter = PathFilter::new(config)?;
    let roots: Vec<PathBuf> = config
        .dirs
        .iter()
        .map(|dir| std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()))
        .collect();
    let handler_roots = roots.clone();

    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        for path in event.paths {
            let root = handler_roots.iter().find(|root| path.starts_with(root));
            if filter.matches(root.map_or(Path::new("/"), PathBuf::as_path), &path) {
                let _ = changes.send(path);
            }
        }
    };
    let mut watcher =
        notify::recommended_watcher(handler).map_err(|source| ReloadError::Watch {
            path: PathBuf::from("."),
            source,
        })?;
    for root in &roots {
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|source| ReloadError::Watch {
                path: root.clone(),
                source,
            })?;
    }
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn filter(include: &[&str], exclude: &[&str]) -> PathFilter {
        let config = ReloadConfig {
            dirs: vec![PathBuf::from("/app")],
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            delay: Duration::ZERO,
        };
        PathFilter::new(&config).unwrap()
    }

    #[test]
    fn python_files_trigger_reload() {
        let filter = filter(&["*.py"], &[]);
        let root = Path::new("/app");
        assert!(filter.matches(root, Path::new("/app/main.py")));
        assert!(filter.matches(root, Path::new("/app/pkg/models.py")));
        assert!(!filter.matches(root, Path::new("/app/README.md")));
    }

    #[test]
    fn hidden_and_cache_paths_ignored() {
        let filter = filter(&["*.py", "*.pyc"], &[]);
        let root = Path::new("/app");
        assert!(!filter.matches(root, Path::new("/app/.venv/lib/site.py")));
        assert!(!filter.matches(root, Path::new("/app/__pycache__/main.cpython-312.pyc")));
        assert!(!filter.matches(root, Path::new("/app/.main.py.swp")));
    }

    #[test]
    fn user_excludes_apply_to_folders() {
        let filter = filter(&["*.py"], &["migrations"]);
        let root = Path::new("/app");
        assert!(!filter.matches(root, Path::new("/app/migrations/0001.py")));
        assert!(filter.matches(root, Path::new("/app/models.py")));
    }
}
