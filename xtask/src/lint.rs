//! `cargo xtask lint`: the structure rules the compiler cannot hold by itself.
//!
//! - No match over fault kinds has a catch-all arm (`_ =>`, or a bare binding), and
//!   no `matches!` tests a fault kind: a new kind must make the compiler list every
//!   place that decides per kind (docs/adding-a-fault.md). A fault kind is a variant
//!   of `Fault` (the proto's oneof), `Scenario` (the spec's list) or `Kind` (the
//!   readings' oneof) named after one of the kinds.
//!
//! Every source file of the workspace is parsed (syn), tests included.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use syn::visit::Visit;

/// The enums that list fault kinds.
const KIND_ENUMS: &[&str] = &["Fault", "Scenario", "Kind"];
/// The variants that are fault kinds, by any of their names.
const KIND_VARIANTS: &[&str] = &[
    "Loss",
    "Latency",
    "Cpu",
    "Memory",
    "Gc",
    "Cache",
    "PacketLoss",
    "LatencyInjection",
    "CpuStress",
    "MemoryStress",
    "CacheInvalidation",
    "GcPressure",
];

/// Whether `path` names a fault kind (`Fault::Loss`, `Scenario::CpuStress`, ...).
fn is_kind(path: &syn::Path) -> bool {
    let s: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    s.len() >= 2
        && KIND_ENUMS.contains(&s[s.len() - 2].as_str())
        && KIND_VARIANTS.contains(&s[s.len() - 1].as_str())
}

/// Whether a pattern mentions a fault kind anywhere inside it.
#[derive(Default)]
struct MentionsKind(bool);

impl<'a> Visit<'a> for MentionsKind {
    fn visit_path(&mut self, p: &'a syn::Path) {
        self.0 |= is_kind(p);
        syn::visit::visit_path(self, p);
    }
}

/// A catch-all arm: `_`, or a plain binding that takes whatever comes (a lowercase
/// name: an uppercase one, `None`, is a unit variant or a constant).
fn catches_all(p: &syn::Pat) -> bool {
    match p {
        syn::Pat::Wild(_) => true,
        syn::Pat::Ident(i) => {
            i.subpat.is_none()
                && i.ident
                    .to_string()
                    .starts_with(|c: char| c.is_lowercase() || c == '_')
        }
        _ => false,
    }
}

struct Finder<'f> {
    file: &'f Path,
    found: Vec<String>,
}

impl Finder<'_> {
    fn flag(&mut self, span: proc_macro2::Span, what: &str) {
        self.found.push(format!(
            "{}:{}: {what}",
            self.file.display(),
            span.start().line
        ));
    }

    fn check_matches(&mut self, mac: &syn::Macro) {
        if !mac.path.is_ident("matches") {
            return;
        }
        let Ok(path_tokens) = syn::parse2::<MatchesArgs>(mac.tokens.clone()) else {
            return;
        };
        let mut m = MentionsKind::default();
        m.visit_pat(&path_tokens.pat);
        if m.0 {
            self.flag(
                mac.path.segments[0].ident.span(),
                "`matches!` over fault kinds (write an exhaustive match)",
            );
        }
    }
}

/// `matches!(expr, pattern)` (a guard, if any, is ignored).
struct MatchesArgs {
    pat: syn::Pat,
}

impl syn::parse::Parse for MatchesArgs {
    fn parse(input: syn::parse::ParseStream<'_>) -> syn::Result<Self> {
        let _: syn::Expr = input.parse()?;
        let _: syn::Token![,] = input.parse()?;
        let pat = syn::Pat::parse_multi_with_leading_vert(input)?;
        let _: proc_macro2::TokenStream = input.parse()?;
        Ok(Self { pat })
    }
}

impl<'a> Visit<'a> for Finder<'_> {
    fn visit_expr_match(&mut self, m: &'a syn::ExprMatch) {
        let mut kinds = MentionsKind::default();
        for arm in &m.arms {
            kinds.visit_pat(&arm.pat);
        }
        if kinds.0 {
            for arm in m.arms.iter().filter(|a| catches_all(&a.pat)) {
                self.flag(
                    arm.fat_arrow_token.spans[0],
                    "a catch-all arm in a match over fault kinds (list every kind)",
                );
            }
        }
        syn::visit::visit_expr_match(self, m);
    }

    fn visit_macro(&mut self, mac: &'a syn::Macro) {
        self.check_matches(mac);
        syn::visit::visit_macro(self, mac);
    }
}

/// What breaks the rules in one file's text.
pub fn check_source(file: &Path, text: &str) -> Result<Vec<String>> {
    let ast = syn::parse_file(text).with_context(|| format!("parsing {}", file.display()))?;
    let mut f = Finder {
        file,
        found: Vec::new(),
    };
    f.visit_file(&ast);
    Ok(f.found)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            sources(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

pub fn lint() -> Result<()> {
    let root = crate::workspace_root();
    let mut files = Vec::new();
    for dir in [
        "agent",
        "agent-ebpf",
        "coordinator",
        "proto",
        "tests",
        "xtask",
    ] {
        sources(&root.join(dir), &mut files)?;
    }
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let rel = f.strip_prefix(&root).unwrap_or(f);
        found.extend(check_source(rel, &text)?);
    }
    if !found.is_empty() {
        bail!("lint: {} place(s):\n  {}", found.len(), found.join("\n  "));
    }
    println!("lint: {} files, no catch-all over fault kinds", files.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(src: &str) -> Vec<String> {
        check_source(Path::new("x.rs"), src).unwrap()
    }

    #[test]
    fn catch_alls_over_fault_kinds_are_found_and_exhaustive_matches_pass() {
        let bad = "fn f(x: Fault) -> u8 { match x { Fault::Loss(_) => 1, _ => 2 } }";
        assert_eq!(found(bad).len(), 1, "{:?}", found(bad));
        let binding =
            "fn f(s: Scenario) -> u8 { match s { Scenario::CpuStress => 1, other => 2 } }";
        assert_eq!(found(binding).len(), 1);
        let nested = "fn f(x: Option<&Fault>) -> u8 { match x { Some(fault_spec::Fault::Gc(_)) => 1, _ => 2 } }";
        assert_eq!(found(nested).len(), 1);
        let mac = "fn f(x: &Fault) -> bool { matches!(x, Fault::Cache(_) | Fault::Gc(_)) }";
        assert_eq!(found(mac).len(), 1);
        let in_test =
            "#[cfg(test)] mod t { fn g(k: Kind) -> bool { matches!(k, Kind::Memory(_)) } }";
        assert_eq!(found(in_test).len(), 1);
        let fine = "fn f(x: Option<Fault>) -> u8 { match x { Some(Fault::Loss(_) | Fault::Latency(_)) => 1, \
                    Some(Fault::Cpu(_) | Fault::Memory(_) | Fault::Gc(_) | Fault::Cache(_)) => 2, \
                    None => 3 } }";
        assert!(found(fine).is_empty());
        let other_enums = "fn f(x: Phase) -> bool { matches!(x, Phase::Fault) || match x { Dir::Ingress => true, _ => false } }";
        assert!(found(other_enums).is_empty(), "{:?}", found(other_enums));
    }
}
