//! Simple C-like expressions over registers, symbols and guest memory:
//! `rsp+8`, `$rax * 2`, `*(u64*)(rsp+8)`, `&known_counter+0x10`,
//! `rdi == 3 && *(u32*)&known_state != 0`.

/// What an expression can look at.
pub trait Env {
    /// A register by name (without `$`).
    fn register(&mut self, name: &str) -> Option<u64>;
    /// A symbol's address.
    fn symbol(&mut self, name: &str) -> Option<u64>;
    /// Reads `size` (1, 2, 4 or 8) bytes, little-endian.
    fn read(&mut self, addr: u64, size: usize) -> Result<u64, String>;
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(u64),
    Ident(String),
    Reg(String),
    Op(&'static str),
}

const OPS: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "+", "-", "*", "/", "%", "(", ")", "&", "|",
    "^", "~", "!", "<", ">",
];

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            out.push(Tok::Num(parse_num(&s[start..i])?));
        } else if c == b'$' || ident(c) {
            let start = i;
            i += 1;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &s[start..i];
            out.push(match word.strip_prefix('$') {
                Some(r) if !r.is_empty() => Tok::Reg(r.to_ascii_lowercase()),
                Some(_) => return Err("'$' without a register name".into()),
                None => Tok::Ident(word.to_string()),
            });
        } else if let Some(op) = OPS.iter().find(|op| s[i..].starts_with(**op)) {
            out.push(Tok::Op(op));
            i += op.len();
        } else {
            return Err(format!("unexpected {:?} in expression", &s[i..]));
        }
    }
    Ok(out)
}

/// Parses `0x1f`, `31`, `0b101`, `0o17` (underscores allowed).
pub fn parse_num(s: &str) -> Result<u64, String> {
    let t = s.replace('_', "");
    let (digits, radix) = match t.get(..2) {
        Some("0x") | Some("0X") => (&t[2..], 16),
        Some("0b") => (&t[2..], 2),
        Some("0o") => (&t[2..], 8),
        _ => (&t[..], 10),
    };
    u64::from_str_radix(digits, radix).map_err(|_| format!("bad number {s:?}"))
}

/// Nesting the parser accepts (unary operators and parentheses), so that a
/// pasted `((((...` gets an error instead of overflowing the stack.
const MAX_DEPTH: usize = 200;

struct Parser<'a, E: Env> {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    env: &'a mut E,
}

impl<E: Env> Parser<'_, E> {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.peek_op(op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn binary(
        &mut self,
        ops: &[&'static str],
        next: fn(&mut Self) -> Result<u64, String>,
    ) -> Result<u64, String> {
        let mut v = next(self)?;
        'outer: loop {
            for &op in ops {
                if self.eat_op(op) {
                    let r = next(self)?;
                    v = apply(op, v, r)?;
                    continue 'outer;
                }
            }
            return Ok(v);
        }
    }

    fn or(&mut self) -> Result<u64, String> {
        self.binary(&["||"], Self::and)
    }
    fn and(&mut self) -> Result<u64, String> {
        self.binary(&["&&"], Self::cmp)
    }
    fn cmp(&mut self) -> Result<u64, String> {
        self.binary(&["==", "!=", "<=", ">=", "<", ">"], Self::bits)
    }
    fn bits(&mut self) -> Result<u64, String> {
        self.binary(&["|", "^", "&"], Self::shift)
    }
    fn shift(&mut self) -> Result<u64, String> {
        self.binary(&["<<", ">>"], Self::add)
    }
    fn add(&mut self) -> Result<u64, String> {
        self.binary(&["+", "-"], Self::mul)
    }
    fn mul(&mut self) -> Result<u64, String> {
        self.binary(&["*", "/", "%"], Self::unary)
    }

    /// `(u32*)` right after a `*`: the access size.
    fn cast(&mut self) -> Option<usize> {
        let (Some(Tok::Op("(")), Some(Tok::Ident(t)), Some(Tok::Op("*")), Some(Tok::Op(")"))) = (
            self.toks.get(self.pos),
            self.toks.get(self.pos + 1),
            self.toks.get(self.pos + 2),
            self.toks.get(self.pos + 3),
        ) else {
            return None;
        };
        let size = match t.as_str() {
            "u8" | "i8" | "char" => 1,
            "u16" | "i16" => 2,
            "u32" | "i32" | "int" => 4,
            "u64" | "i64" | "usize" | "isize" | "long" => 8,
            _ => return None,
        };
        self.pos += 4;
        Some(size)
    }

    fn unary(&mut self) -> Result<u64, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!("expression nested deeper than {MAX_DEPTH}"));
        }
        self.depth += 1;
        let v = self.unary_inner();
        self.depth -= 1;
        v
    }

    fn unary_inner(&mut self) -> Result<u64, String> {
        if self.eat_op("-") {
            return Ok(self.unary()?.wrapping_neg());
        }
        if self.eat_op("~") {
            return Ok(!self.unary()?);
        }
        if self.eat_op("!") {
            return Ok((self.unary()? == 0) as u64);
        }
        if self.eat_op("*") {
            let size = self.cast().unwrap_or(8);
            let addr = self.unary()?;
            return self.env.read(addr, size);
        }
        if self.eat_op("&") {
            return match self.toks.get(self.pos).cloned() {
                Some(Tok::Ident(name)) => {
                    self.pos += 1;
                    self.env
                        .symbol(&name)
                        .ok_or_else(|| format!("no symbol {name:?}"))
                }
                _ => Err("'&' needs a symbol name".into()),
            };
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<u64, String> {
        let tok = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("expression ends too early")?;
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(n),
            Tok::Reg(r) => self
                .env
                .register(&r)
                .ok_or_else(|| format!("no register ${r}")),
            Tok::Ident(name) => self
                .env
                .symbol(&name)
                .or_else(|| self.env.register(&name.to_ascii_lowercase()))
                .ok_or_else(|| format!("no symbol or register {name:?}")),
            Tok::Op("(") => {
                let v = self.or()?;
                if !self.eat_op(")") {
                    return Err("missing ')'".into());
                }
                Ok(v)
            }
            Tok::Op(op) => Err(format!("unexpected '{op}'")),
        }
    }
}

fn apply(op: &str, a: u64, b: u64) -> Result<u64, String> {
    Ok(match op {
        "+" => a.wrapping_add(b),
        "-" => a.wrapping_sub(b),
        "*" => a.wrapping_mul(b),
        "/" => a.checked_div(b).ok_or("division by zero")?,
        "%" => a.checked_rem(b).ok_or("division by zero")?,
        "<<" => a.checked_shl(b as u32).unwrap_or(0),
        ">>" => a.checked_shr(b as u32).unwrap_or(0),
        "&" => a & b,
        "|" => a | b,
        "^" => a ^ b,
        "==" => (a == b) as u64,
        "!=" => (a != b) as u64,
        "<" => (a < b) as u64,
        ">" => (a > b) as u64,
        "<=" => (a <= b) as u64,
        ">=" => (a >= b) as u64,
        "&&" => (a != 0 && b != 0) as u64,
        "||" => (a != 0 || b != 0) as u64,
        _ => return Err(format!("unknown operator {op}")),
    })
}

/// Evaluates `src` against `env`.
pub fn eval(src: &str, env: &mut impl Env) -> Result<u64, String> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err("empty expression".into());
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        env,
    };
    let v = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!(
            "unexpected {:?} after the expression",
            p.toks[p.pos]
        ));
    }
    Ok(v)
}

/// The size of a `*(uN*)` target at the start of `lhs` and the address
/// expression after it (for `set *(u32*)ADDR = VALUE`).
pub fn split_deref(lhs: &str) -> Option<(usize, &str)> {
    let rest = lhs.trim().strip_prefix('*')?.trim_start();
    for (ty, size) in [
        ("(u8*)", 1),
        ("(u16*)", 2),
        ("(u32*)", 4),
        ("(u64*)", 8),
        ("(i8*)", 1),
        ("(i16*)", 2),
        ("(i32*)", 4),
        ("(i64*)", 8),
    ] {
        if let Some(addr) = rest.strip_prefix(ty) {
            return Some((size, addr));
        }
    }
    Some((8, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct T {
        regs: HashMap<&'static str, u64>,
        mem: HashMap<u64, u8>,
    }
    impl Env for T {
        fn register(&mut self, name: &str) -> Option<u64> {
            self.regs.get(name).copied()
        }
        fn symbol(&mut self, name: &str) -> Option<u64> {
            (name == "known_counter").then_some(0x2000)
        }
        fn read(&mut self, addr: u64, size: usize) -> Result<u64, String> {
            (0..size).try_fold(0u64, |acc, i| {
                let b = self
                    .mem
                    .get(&(addr + i as u64))
                    .ok_or(format!("cannot read {:#x}", addr + i as u64))?;
                Ok(acc | (u64::from(*b) << (8 * i)))
            })
        }
    }

    fn env() -> T {
        let mut mem = HashMap::new();
        for i in 0..16u64 {
            mem.insert(0x1008 + i, 0x10 + i as u8);
        }
        mem.insert(0x2000, 7);
        T {
            regs: [("rsp", 0x1000), ("rax", 5), ("rdi", 3)].into(),
            mem,
        }
    }

    #[test]
    fn arithmetic_and_precedence() {
        let mut e = env();
        assert_eq!(eval("1 + 2 * 3", &mut e), Ok(7));
        assert_eq!(eval("(1 + 2) * 3", &mut e), Ok(9));
        assert_eq!(eval("0x10 - 1", &mut e), Ok(15));
        assert_eq!(eval("-1", &mut e), Ok(u64::MAX));
        assert_eq!(eval("1 << 4 | 1", &mut e), Ok(17));
        assert_eq!(eval("$rax * 2 + rdi", &mut e), Ok(13));
        assert!(eval("1 / 0", &mut e).is_err());
        assert!(eval("1 +", &mut e).is_err());
        assert!(eval("(1", &mut e).is_err());
        assert!(eval("$nope", &mut e).is_err());
        assert!(eval("1 2", &mut e).is_err());
        assert!(eval("@", &mut e).is_err());
    }

    #[test]
    fn derefs_casts_and_symbols() {
        let mut e = env();
        assert_eq!(eval("*(u64*)(rsp+8)", &mut e), Ok(0x1716_1514_1312_1110));
        assert_eq!(eval("*(u8*)(rsp+9)", &mut e), Ok(0x11));
        assert_eq!(eval("*(u16*)($rsp + 8)", &mut e), Ok(0x1110));
        assert_eq!(eval("&known_counter+0x10", &mut e), Ok(0x2010));
        assert_eq!(eval("*(u8*)&known_counter", &mut e), Ok(7));
        assert!(eval("*(u64*)0", &mut e).is_err());
        assert!(eval("&rax", &mut e).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut e = env();
        let ok = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(eval(&ok, &mut e), Ok(1));
        assert_eq!(eval(&format!("{}5", "-".repeat(100)), &mut e), Ok(5));
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(eval(&deep, &mut e).unwrap_err().contains("nested deeper"));
        assert!(eval(&"~".repeat(100_000), &mut e).is_err());
    }

    #[test]
    fn conditions() {
        let mut e = env();
        assert_eq!(eval("rdi == 3 && rax != 0", &mut e), Ok(1));
        assert_eq!(eval("rdi > 3 || !rax", &mut e), Ok(0));
        assert_eq!(eval("rdi >= 3", &mut e), Ok(1));
    }

    #[test]
    fn deref_targets() {
        assert_eq!(split_deref("*(u32*)0x10"), Some((4, "0x10")));
        assert_eq!(split_deref(" *rsp"), Some((8, "rsp")));
        assert_eq!(split_deref("rax"), None);
    }
}
