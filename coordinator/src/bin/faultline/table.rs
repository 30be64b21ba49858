//! The CLI's tables: one shape for every list a verb prints — no borders, columns two
//! spaces apart, the last column as long as it is, numbers right-aligned where a verb
//! asks — built with comfy-table so no verb pads by hand. Every cell passes through
//! `view::printable`: a name, title or reason someone else wrote never reaches the
//! terminal with its control characters raw.
use comfy_table::{CellAlignment, Table as Grid, presets};
use faultline_coordinator::view::printable;

pub struct Table {
    grid: Grid,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        let mut grid = Grid::new();
        grid.load_style(presets::NOTHING).set_header(header);
        for column in grid.column_iter_mut() {
            column.set_padding((0, 2));
        }
        Self { grid }
    }

    /// Right-aligns the columns at `indexes` (numbers).
    pub fn right(mut self, indexes: &[usize]) -> Self {
        for &i in indexes {
            if let Some(c) = self.grid.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        self
    }

    /// A row; a cell that is empty shows as `-`.
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.grid.add_row(cells.map(|c| {
            if c.is_empty() {
                "-".to_owned()
            } else {
                printable(&c).into_owned()
            }
        }));
    }

    /// The table's lines, trailing spaces trimmed.
    pub fn lines(&self) -> Vec<String> {
        self.grid.lines().map(|l| l.trim_end().to_owned()).collect()
    }

    pub fn print(&self) {
        for line in self.lines() {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_two_spaces_apart_and_cells_are_made_printable() {
        let mut t = Table::new(["NODE", "LEASE"]).right(&[]);
        t.row(["node-1".into(), String::new()]);
        t.row(["a\u{1b}[31mb".into(), "lease-7".into()]);
        assert_eq!(
            t.lines(),
            [
                "NODE          LEASE",
                "node-1        -",
                "a\\u{1b}[31mb  lease-7"
            ]
        );
        let mut n = Table::new(["signal", "worst"]).right(&[1]);
        n.row(["p99".into(), "12.50".into()]);
        n.row(["error_rate".into(), "0.10".into()]);
        assert_eq!(
            n.lines(),
            [
                "signal      worst",
                "p99         12.50",
                "error_rate   0.10"
            ]
        );
    }
}
