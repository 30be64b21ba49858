//! `cargo xtask lint`: the structure rules the compiler cannot hold by itself.
//!
//! - No match over fault kinds has a catch-all arm (`_ =>`, or a bare binding), and
//!   no `matches!` tests a fault kind: a new kind must make the compiler list every
//!   place that decides per kind (docs/adding-a-fault.md). A fault kind is a variant
//!   of `Fault` (the proto's oneof), `Scenario` (the spec's list) or `Kind` (the
//!   readings' oneof) named after one of the kinds.
//!
//! - No import circle inside a crate: file A names an item of file B's module (by
//!   `crate::`, `super::` or `self::` paths) is an arrow A → B, and no file reaches
//!   itself by arrows. A module owning its children (`mod.rs` naming a submodule) draws
//!   no arrow, a child naming its parent does.
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
    let mut modules = 0;
    for src in [
        "agent/src",
        "agent-ebpf/src",
        "coordinator/src",
        "proto/src",
        "tests/src",
        "xtask/src",
    ] {
        let graph = Graph::read(&root, Path::new(src))?;
        modules += graph.files.len();
        found.extend(graph.circles());
    }
    if !found.is_empty() {
        bail!("lint: {} place(s):\n  {}", found.len(), found.join("\n  "));
    }
    println!(
        "lint: {} files, no catch-all over fault kinds; {modules} modules, no import circle",
        files.len()
    );
    Ok(())
}

/// The module path of a source file under a crate's `src` (`a/b.rs` and `a/b/mod.rs`
/// are `a::b`; `lib.rs` and `main.rs` are the root).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    let crate_root = parts.is_empty() && (stem == "lib" || stem == "main");
    if stem != "mod" && !crate_root {
        parts.push(stem.to_owned());
    }
    parts
}

/// Every path a file names: `use` trees flattened, and paths in code.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut v = prefix.clone();
            v.push(n.ident.to_string());
            out.push(v);
        }
        syn::UseTree::Rename(r) => {
            let mut v = prefix.clone();
            v.push(r.ident.to_string());
            out.push(v);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix, out);
            }
        }
    }
}

impl<'a> Visit<'a> for Paths {
    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        flatten(&u.tree, &mut Vec::new(), &mut self.0);
    }

    fn visit_path(&mut self, p: &'a syn::Path) {
        self.0
            .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

/// One crate's modules (its files) and the arrows between them.
struct Graph {
    files: Vec<(PathBuf, Vec<String>)>,
    arrows: Vec<Vec<usize>>,
}

impl Graph {
    fn read(root: &Path, src: &Path) -> Result<Self> {
        let base = root.join(src);
        let mut paths = Vec::new();
        sources(&base, &mut paths)?;
        // A crate's binaries under src/bin are crates of their own.
        paths.retain(|p| !p.strip_prefix(&base).is_ok_and(|r| r.starts_with("bin")));
        paths.sort();
        let files: Vec<(PathBuf, Vec<String>)> = paths
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(&base).unwrap_or(p);
                (p.strip_prefix(root).unwrap_or(p).to_owned(), module_of(rel))
            })
            .collect();
        let index = |m: &[String]| files.iter().position(|(_, fm)| fm == m);
        let mut arrows = vec![Vec::new(); files.len()];
        for (i, (file, module)) in files.iter().enumerate() {
            let text = std::fs::read_to_string(root.join(file))?;
            let ast =
                syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
            let mut named = Paths::default();
            named.visit_file(&ast);
            for path in named.0 {
                let target: Vec<String> = match path.first().map(String::as_str) {
                    Some("crate") => path[1..].to_vec(),
                    Some("super") => {
                        let mut m = module.clone();
                        let mut rest = &path[..];
                        while rest.first().is_some_and(|s| s == "super") {
                            m.pop();
                            rest = &rest[1..];
                        }
                        m.extend(rest.iter().cloned());
                        m
                    }
                    // `self::` and bare paths name this module's own children.
                    _ => continue,
                };
                // The longest prefix that is a module of this crate (the root at least).
                let Some(j) = (0..=target.len()).rev().find_map(|n| index(&target[..n])) else {
                    continue;
                };
                // A module owns its descendants: no arrow down, none to itself.
                if files[j].1.starts_with(module) {
                    continue;
                }
                if !arrows[i].contains(&j) {
                    arrows[i].push(j);
                }
            }
        }
        Ok(Self { files, arrows })
    }

    /// Every set of files that reach one another by arrows (strongly connected
    /// components of more than one file, Tarjan), named.
    fn circles(&self) -> Vec<String> {
        let mut t = Tarjan {
            arrows: &self.arrows,
            index: vec![None; self.files.len()],
            low: vec![0; self.files.len()],
            on_stack: vec![false; self.files.len()],
            stack: Vec::new(),
            next: 0,
            out: Vec::new(),
        };
        for v in 0..self.files.len() {
            if t.index[v].is_none() {
                t.visit(v);
            }
        }
        t.out
            .into_iter()
            .map(|scc| {
                let mut names: Vec<String> = scc
                    .iter()
                    .map(|&i| self.files[i].0.display().to_string())
                    .collect();
                names.sort();
                format!(
                    "an import circle of {} files: {}",
                    names.len(),
                    names.join(", ")
                )
            })
            .collect()
    }
}

struct Tarjan<'g> {
    arrows: &'g [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    out: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.arrows[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                self.out.push(scc);
            }
        }
    }
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

    #[test]
    fn import_circles_are_found_and_a_module_owning_its_children_is_none() {
        let dir = std::env::temp_dir().join(format!("fl-lint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("faults")).unwrap();
        let write = |p: &str, t: &str| std::fs::write(src.join(p), t).unwrap();
        write("lib.rs", "mod a; mod b; mod c; mod faults;");
        write("a.rs", "use crate::b::Thing; pub struct A;");
        write(
            "b.rs",
            "pub fn f() -> crate::c::C { todo!() } pub struct Thing;",
        );
        write("c.rs", "use super::a::A; pub struct C;");
        // A parent naming its child and the child naming its parent: no circle.
        write(
            "faults/mod.rs",
            "pub mod loss; pub fn build() { loss::build() } pub struct Ctx;",
        );
        write("faults/loss.rs", "use super::Ctx; pub fn build() {}");
        let g = Graph::read(&dir, Path::new("src")).unwrap();
        let found = g.circles();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("3 files: src/a.rs, src/b.rs, src/c.rs"),
            "{found:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
