//! Realistic JSON market data for compression measurements: Binance-shaped trade, book ticker,
//! 24 h ticker and depth-update events, from a seeded generator (no I/O, no dependencies), so
//! every run and every tool sees the same bytes.
//!
//! Prices follow a random walk with realistic tick sizes; quantities, ids and timestamps
//! change the way a live feed's do, so the text compresses like a real feed (field names and
//! price prefixes repeat, digits do not). Depth updates carry `levels` price levels a side and
//! give the 1–4 KB messages.
//!
//! Also compiled into `proto/benches/deflate.rs` (`#[path]`), so keep it std-only.

use std::fmt::Write;

/// A small deterministic PRNG (xorshift64*): good enough to make digits look random.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The kinds of event the generator emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `trade` (~170 B).
    Trade,
    /// `bookTicker` (~130 B).
    BookTicker,
    /// `24hrTicker` (~480 B).
    Ticker,
    /// `depthUpdate` with this many levels per side (~70 B + 2 × 36 B per level).
    Depth(usize),
}

/// A feed of one symbol: a price random walk and monotonic ids and timestamps.
#[derive(Clone, Debug)]
pub struct Feed {
    rng: Rng,
    symbol: &'static str,
    /// Price in ticks of 0.01.
    price: i64,
    trade_id: u64,
    update_id: u64,
    time_ms: u64,
}

const SYMBOLS: [&str; 6] = [
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT",
];

impl Feed {
    /// A feed seeded with `seed` (the symbol is picked from it too).
    pub fn new(seed: u64) -> Feed {
        let mut rng = Rng::new(seed);
        let symbol = SYMBOLS[rng.below(SYMBOLS.len() as u64) as usize];
        Feed {
            price: 9_700_000 + rng.below(200_000) as i64,
            trade_id: 4_100_000_000 + rng.below(100_000_000),
            update_id: 60_000_000_000 + rng.below(1_000_000_000),
            time_ms: 1_763_800_000_000 + rng.below(1_000_000),
            symbol,
            rng,
        }
    }

    fn step(&mut self) {
        self.time_ms += 1 + self.rng.below(40);
        self.price += self.rng.below(21) as i64 - 10;
        self.trade_id += 1 + self.rng.below(3);
        self.update_id += 1 + self.rng.below(20);
    }

    /// A price `offset` ticks from the current one, as Binance writes it (8 decimals).
    fn price_str(&self, out: &mut String, offset: i64) {
        let p = self.price + offset;
        let _ = write!(out, "\"{}.{:02}000000\"", p / 100, p % 100);
    }

    fn qty_str(&mut self, out: &mut String) {
        let q = self.rng.below(5_000_000);
        let _ = write!(out, "\"{}.{:05}000\"", q / 100_000, q % 100_000);
    }

    /// The next event of `kind`, as JSON text.
    pub fn event(&mut self, kind: Kind) -> String {
        self.step();
        let mut s = String::with_capacity(256);
        let (e, t, sym) = (self.time_ms, self.trade_id, self.symbol);
        match kind {
            Kind::Trade => {
                let _ = write!(
                    s,
                    "{{\"e\":\"trade\",\"E\":{e},\"s\":\"{sym}\",\"t\":{t},\"p\":"
                );
                self.price_str(&mut s, 0);
                s.push_str(",\"q\":");
                self.qty_str(&mut s);
                let maker = self.rng.below(2) == 0;
                let _ = write!(s, ",\"T\":{},\"m\":{maker},\"M\":true}}", e - 1);
            }
            Kind::BookTicker => {
                let _ = write!(s, "{{\"u\":{},\"s\":\"{sym}\",\"b\":", self.update_id);
                self.price_str(&mut s, 0);
                s.push_str(",\"B\":");
                self.qty_str(&mut s);
                s.push_str(",\"a\":");
                self.price_str(&mut s, 1);
                s.push_str(",\"A\":");
                self.qty_str(&mut s);
                s.push('}');
            }
            Kind::Ticker => {
                let _ = write!(
                    s,
                    "{{\"e\":\"24hrTicker\",\"E\":{e},\"s\":\"{sym}\",\"p\":\"-{}.{:02}000000\",\"P\":\"-0.{:03}\",\"w\":",
                    self.rng.below(3000),
                    self.rng.below(100),
                    self.rng.below(1000)
                );
                for (key, off) in [("w", 3), ("x", -40), ("c", 0)] {
                    if key != "w" {
                        let _ = write!(s, ",\"{key}\":");
                    }
                    self.price_str(&mut s, off);
                }
                s.push_str(",\"Q\":");
                self.qty_str(&mut s);
                for (key, off) in [("b", 0), ("B", 0), ("a", 1), ("A", 0)] {
                    let _ = write!(s, ",\"{key}\":");
                    if key == "B" || key == "A" {
                        self.qty_str(&mut s);
                    } else {
                        self.price_str(&mut s, off);
                    }
                }
                for (key, off) in [("o", 2500), ("h", 3100), ("l", -2200)] {
                    let _ = write!(s, ",\"{key}\":");
                    self.price_str(&mut s, off);
                }
                let _ = write!(
                    s,
                    ",\"v\":\"{}.{:08}\",\"q\":\"{}.{:08}\",\"O\":{},\"C\":{e},\"F\":{},\"L\":{t},\"n\":{}}}",
                    self.rng.below(90_000),
                    self.rng.below(100_000_000),
                    self.rng.below(9_000_000_000),
                    self.rng.below(100_000_000),
                    e - 86_400_000,
                    t - 2_000_000,
                    2_000_000 + self.rng.below(100_000)
                );
            }
            Kind::Depth(levels) => {
                let first = self.update_id;
                self.update_id += levels as u64;
                let _ = write!(
                    s,
                    "{{\"e\":\"depthUpdate\",\"E\":{e},\"s\":\"{sym}\",\"U\":{first},\"u\":{},\"b\":[",
                    self.update_id
                );
                for side in [-1i64, 1] {
                    if side == 1 {
                        s.push_str("],\"a\":[");
                    }
                    let mut off = 0i64;
                    for l in 0..levels {
                        if l > 0 {
                            s.push(',');
                        }
                        off += 1 + self.rng.below(4) as i64;
                        s.push('[');
                        self.price_str(&mut s, side * off);
                        s.push(',');
                        if self.rng.below(5) == 0 {
                            s.push_str("\"0.00000000\"");
                        } else {
                            self.qty_str(&mut s);
                        }
                        s.push(']');
                    }
                }
                s.push_str("]}");
            }
        }
        s
    }

    /// The next event of a live-looking mix: mostly trades and book tickers, some 24 h
    /// tickers and depth updates of 5–50 levels (100 B – 4 KB, ~700 B on average).
    pub fn mixed(&mut self) -> String {
        let kind = match self.rng.below(20) {
            0..=7 => Kind::Trade,
            8..=11 => Kind::BookTicker,
            12..=13 => Kind::Ticker,
            14..=17 => Kind::Depth(5 + self.rng.below(10) as usize),
            _ => Kind::Depth(20 + self.rng.below(35) as usize),
        };
        self.event(kind)
    }
}

/// A corpus of `n` messages of `kind` from one seeded feed (proto/benches/deflate.rs).
#[allow(dead_code)]
pub fn corpus(kind: Kind, n: usize, seed: u64) -> Vec<String> {
    let mut feed = Feed::new(seed);
    (0..n).map(|_| feed.event(kind)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_of_the_advertised_sizes() {
        let mut feed = Feed::new(7);
        for (kind, lo, hi) in [
            (Kind::Trade, 120, 220),
            (Kind::BookTicker, 100, 180),
            (Kind::Ticker, 380, 600),
            (Kind::Depth(5), 400, 600),
            (Kind::Depth(55), 3500, 4600),
        ] {
            let e = feed.event(kind);
            let v: serde_json::Value = serde_json::from_str(&e).expect(&e);
            assert!(v.is_object());
            assert!((lo..=hi).contains(&e.len()), "{kind:?}: {} B: {e}", e.len());
        }
        let mix: Vec<String> = (0..1000).map(|_| feed.mixed()).collect();
        let avg = mix.iter().map(String::len).sum::<usize>() / mix.len();
        assert!((400..1200).contains(&avg), "mixed average {avg} B");
        assert_eq!(corpus(Kind::Trade, 3, 1), corpus(Kind::Trade, 3, 1));
    }
}
