//! What the local Portage would merge: the package lines of `emerge --pretend --verbose`
//! (`--color=n`), in merge order, with each package's flags as this machine has them.

use std::collections::BTreeMap;

/// How Portage would merge a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Built from its ebuild (`[ebuild ...]`): cq-emerge has the build host build it.
    Ebuild,
    /// From a binary package this machine already sees (`[binary ...]`): installed as is.
    Binary,
}

/// One package of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Built or installed from a binary package.
    pub source: Source,
    /// `CATEGORY/PF` (for a binary package, with its build id: `app-misc/hello-1.0-2`).
    pub cpv: String,
    /// The flag variables of the line, as this machine has them: `USE` and each
    /// `USE_EXPAND` variable shown (`ABI_X86`, `CPU_FLAGS_X86`, `PYTHON_TARGETS`, ...); each
    /// value lists every changeable flag, enabled (`foo`) or not (`-bar`), sorted, so that
    /// equal flags give equal values on every machine. Forced and masked flags (in
    /// parentheses) are left out: the build host's profile decides them.
    pub flags: BTreeMap<String, String>,
}

impl Planned {
    /// The atom that names exactly this package: `=CATEGORY/PF`.
    pub fn atom(&self) -> String {
        format!("={}", self.cpv)
    }
}

/// A plan line that cannot be taken as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A blocker Portage could not resolve by itself (`[blocks B ...]`).
    #[error("Portage reports a blocker it cannot resolve ({0}): resolve it with emerge first")]
    Blocked(String),
    /// `[uninstall ...]`: the plan removes a package, which cq-emerge does not do.
    #[error("the plan uninstalls {0}: run this emerge by hand")]
    Uninstall(String),
    /// A package line whose package is not `CATEGORY/PF`.
    #[error("cannot read this line of emerge's plan: {0}")]
    Unreadable(String),
}

/// The packages of `output` (emerge `--pretend --verbose --color=n`), in order. Lines that
/// are not package lines (headers, totals, messages) are skipped; `[nomerge ...]` and
/// soft blockers (`[blocks b ...]`, which Portage resolves itself) too.
///
/// # Errors
///
/// A hard blocker, an uninstall, or a package line that cannot be read.
pub fn parse(output: &str) -> Result<Vec<Planned>, PlanError> {
    let mut plan = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((status, rest)) = rest.split_once(']') else {
            continue;
        };
        let mut words = status.split_whitespace();
        let source = match words.next() {
            Some("ebuild") => Source::Ebuild,
            Some("binary") => Source::Binary,
            Some("blocks") if status.contains('B') => {
                return Err(PlanError::Blocked(rest.trim().to_owned()));
            }
            Some("uninstall") => return Err(PlanError::Uninstall(rest.trim().to_owned())),
            _ => continue,
        };
        let rest = rest.trim_start();
        let (package, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        // CATEGORY/PF[:SLOT][::REPO]
        let package = package.split("::").next().unwrap_or_default();
        let cpv = package.split(':').next().unwrap_or_default();
        if !is_cpv(cpv) {
            return Err(PlanError::Unreadable(line.to_owned()));
        }
        plan.push(Planned {
            source,
            cpv: cpv.to_owned(),
            flags: flag_variables(rest),
        });
    }
    Ok(plan)
}

/// Whether `cpv` looks like `CATEGORY/PF`: two names of Portage's characters, the second
/// with a version.
pub fn is_cpv(cpv: &str) -> bool {
    let name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['-', '.'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'))
    };
    match cpv.split_once('/') {
        Some((category, pf)) => {
            name(category)
                && name(pf)
                && pf
                    .split('-')
                    .skip(1)
                    .any(|part| part.starts_with(|c: char| c.is_ascii_digit()))
        }
        None => false,
    }
}

/// `NAME="flags"` groups of a package line (`USE="foo -bar*" ABI_X86="(64) 32"`).
fn flag_variables(text: &str) -> BTreeMap<String, String> {
    let mut variables = BTreeMap::new();
    let mut rest = text;
    while let Some(at) = rest.find("=\"") {
        let name_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .map_or(0, |i| i + 1);
        let name = &rest[name_start..at];
        let value_start = at + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        let value = &rest[value_start..value_start + len];
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
            variables.insert(name.to_owned(), flags(value));
        }
        rest = &rest[value_start + len + 1..];
    }
    variables
}

/// The changeable flags of `value`, markers removed (`*` changed, `%` new), sorted by name.
fn flags(value: &str) -> String {
    let mut flags: Vec<&str> = value
        .split_whitespace()
        .filter(|flag| !flag.starts_with('(') && !flag.starts_with('{'))
        .map(|flag| flag.trim_end_matches(['*', '%']))
        .filter(|flag| !flag.is_empty() && *flag != "-")
        .collect();
    flags.sort_by_key(|flag| flag.trim_start_matches('-'));
    flags.dedup();
    flags.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from real Portage 3.0.83 runs (../shared/PORTAGE.md and the tests' repo),
    /// plus the shapes a Gentoo system prints for slots, upgrades and USE_EXPAND flags.
    const RECORDED: &str = r#"
These are the packages that would be merged, in order:

Calculating dependencies ... done!
Dependency resolution took 0.01 s (backtrack: 0/20).

[ebuild  N     ] app-misc/hello-1.0::derisk to /tmp/cq-portage/vm1/ USE="foo -bar" 0 KiB
[binary   R    ] app-misc/hello-1.0-2::derisk to /tmp/cq-portage/vm1/ USE="bar* -foo*" 0 KiB
[ebuild     U  ] dev-lang/python-3.11.9:3.11::gentoo [3.11.8:3.11::gentoo] USE="ensurepip ncurses readline sqlite ssl -bluetooth -build -debug -examples -gdbm% (-libedit) -pgo -test -tk -valgrind" 19,649 KiB
[ebuild  NS    ] sys-libs/zlib-1.3.1-r1:0/1::gentoo USE="minizip -static-libs" ABI_X86="32 (64) -x32" 0 KiB
[nomerge       ] app-misc/world-1.0::derisk
[ebuild   R   ~] media-libs/libvpx-1.14.0:0/9::gentoo  USE="highbitdepth postproc -doc {-test}" CPU_FLAGS_X86="avx avx2 sse2 -avx512" 0 KiB
[blocks b      ] <sys-apps/man-pages-5.0 ("<sys-apps/man-pages-5.0" is soft blocking sys-libs/glibc-2.39)

Total: 4 packages (1 upgrade, 1 new, 1 reinstall, 1 binary), Size of downloads: 19,649 KiB
"#;

    #[test]
    fn real_plans_give_packages_in_order_with_their_flags() {
        let plan = parse(RECORDED).unwrap();
        let cpvs: Vec<(&str, Source)> = plan.iter().map(|p| (p.cpv.as_str(), p.source)).collect();
        assert_eq!(
            cpvs,
            [
                ("app-misc/hello-1.0", Source::Ebuild),
                ("app-misc/hello-1.0-2", Source::Binary),
                ("dev-lang/python-3.11.9", Source::Ebuild),
                ("sys-libs/zlib-1.3.1-r1", Source::Ebuild),
                ("media-libs/libvpx-1.14.0", Source::Ebuild),
            ]
        );
        assert_eq!(plan[0].flags["USE"], "-bar foo");
        assert_eq!(plan[1].flags["USE"], "bar -foo");
        assert_eq!(
            plan[2].flags["USE"],
            "-bluetooth -build -debug ensurepip -examples -gdbm ncurses -pgo readline sqlite ssl -test -tk -valgrind"
        );
        assert_eq!(plan[3].flags["ABI_X86"], "32 -x32");
        assert_eq!(plan[3].flags["USE"], "minizip -static-libs");
        assert_eq!(plan[4].flags["CPU_FLAGS_X86"], "avx avx2 -avx512 sse2");
        assert_eq!(plan[4].flags["USE"], "-doc highbitdepth postproc");
        assert_eq!(plan[0].atom(), "=app-misc/hello-1.0");
    }

    #[test]
    fn equal_flags_in_any_order_give_equal_values() {
        let a = parse("[ebuild  N ] a/b-1::r USE=\"x -y z\"").unwrap();
        let b = parse("[ebuild  N ] a/b-1::r USE=\"z* x -y%\"").unwrap();
        assert_eq!(a[0].flags, b[0].flags);
    }

    #[test]
    fn what_cq_emerge_cannot_do_is_refused() {
        assert!(matches!(
            parse("[blocks B      ] sys-apps/foo (\"sys-apps/foo\" is blocking sys-apps/bar-1)"),
            Err(PlanError::Blocked(_))
        ));
        assert!(matches!(
            parse("[uninstall     ] app-misc/old-1::gentoo"),
            Err(PlanError::Uninstall(_))
        ));
        assert!(matches!(
            parse("[ebuild  N ] ../../etc/passwd USE=\"\""),
            Err(PlanError::Unreadable(_))
        ));
        assert!(matches!(
            parse("[ebuild  N ] -x/y-1 USE=\"\""),
            Err(PlanError::Unreadable(_))
        ));
    }

    #[test]
    fn a_cpv_has_a_category_a_name_and_a_version() {
        assert!(is_cpv("app-misc/hello-1.0"));
        assert!(is_cpv("dev-libs/libfoo-2.3.1_rc1-r4"));
        assert!(!is_cpv("app-misc/hello"));
        assert!(!is_cpv("hello-1.0"));
        assert!(!is_cpv("app-misc/hello-1.0 --root=/"));
        assert!(!is_cpv("app-misc/-1.0"));
    }
}
