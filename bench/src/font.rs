//! The one font every plot uses, embedded: DejaVu Sans cut down to the glyphs plots need (ASCII,
//! µ, ×, dashes, ellipsis; 10 KB; license in `assets/DejaVuSans-plot.LICENSE`). Plots then look
//! the same everywhere and never read system fonts, which servers and CI images often lack; the
//! PNG output of `compare` needs real glyphs to rasterize.

/// DejaVu Sans, subset with fonttools' `pyftsubset` (see the license file for the command).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-plot.ttf");

/// Register the font as plotters' `sans-serif` (once; later calls do nothing). Every plot calls
/// this before drawing: with plotters' `ab_glyph` text, an unregistered family is an error.
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded font does not parse"));
    });
}
