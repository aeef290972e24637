//! Bounds on loading a plugin, checked before (and around) compiling it.
//!
//! Compiling is not linear in a component's size: Cranelift spends minutes and hundreds of MiB
//! on a few hundred KiB of deeply nested `loop`s or of one function made of hundreds of
//! thousands of blocks. So a component is first read with `wasmparser` (one linear pass, no
//! code generated) and refused when a function is larger, nests control deeper or holds more
//! blocks than any compiler-generated plugin does, or when it defines too many functions; the
//! compile itself then runs under a deadline ([`LoadLimits::compile_deadline`]). The memory a
//! compile takes follows the size of the largest function, which the first check bounds.

use std::time::Duration;

use wasmparser::{Operator, Parser, Payload};

/// Limits on loading a plugin (the per-call [`super::Limits`] start once it is loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// Longest a compile may take (default 60 s).
    pub compile_deadline: Duration,
    /// Largest function body, in bytes (default 4 MiB).
    pub max_function_bytes: usize,
    /// Deepest nesting of `block`, `loop`, `if` and `try_table` in one function (default 1024).
    pub max_control_depth: usize,
    /// Most control constructs in one function (default 100 000).
    pub max_blocks_per_function: usize,
    /// Most functions defined in all of the component's modules together (default 500 000).
    pub max_functions: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            compile_deadline: Duration::from_secs(60),
            max_function_bytes: 4 << 20,
            max_control_depth: 1024,
            max_blocks_per_function: 100_000,
            max_functions: 500_000,
        }
    }
}

/// Checks a component's shape against `limits` without compiling it; the reason when it is
/// refused. A component that does not parse is left to wasmtime, whose message says why.
pub(crate) fn check_shape(bytes: &[u8], limits: &LoadLimits) -> Result<(), String> {
    let mut functions = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return Ok(()) };
        let Payload::CodeSectionEntry(body) = payload else { continue };
        functions += 1;
        if functions > limits.max_functions {
            return Err(format!("it defines more than {} functions", limits.max_functions));
        }
        let size = body.range().len();
        if size > limits.max_function_bytes {
            return Err(format!(
                "function {} is {size} bytes long, more than the {} bytes prpod compiles",
                functions - 1,
                limits.max_function_bytes
            ));
        }
        let Ok(mut ops) = body.get_operators_reader() else { return Ok(()) };
        let (mut depth, mut blocks) = (0usize, 0usize);
        while !ops.eof() {
            let Ok(op) = ops.read() else { return Ok(()) };
            match op {
                Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } | Operator::TryTable { .. } => {
                    depth += 1;
                    blocks += 1;
                    if depth > limits.max_control_depth {
                        return Err(format!(
                            "function {} nests blocks more than {} deep",
                            functions - 1,
                            limits.max_control_depth
                        ));
                    }
                    if blocks > limits.max_blocks_per_function {
                        return Err(format!(
                            "function {} has more than {} blocks",
                            functions - 1,
                            limits.max_blocks_per_function
                        ));
                    }
                }
                Operator::End => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(body: &str) -> Vec<u8> {
        wat::parse_str(format!("(module (func {body}))")).unwrap()
    }

    #[test]
    fn shapes_that_compile_slowly_are_refused_before_compiling() {
        let limits = LoadLimits::default();
        let nested = module(&format!("{}{}", "(loop ".repeat(2000), ")".repeat(2000)));
        assert!(check_shape(&nested, &limits).unwrap_err().contains("more than 1024 deep"));
        let many = module(&"(block) ".repeat(100_001));
        assert!(check_shape(&many, &limits).unwrap_err().contains("more than 100000 blocks"));
        let small = LoadLimits { max_function_bytes: 1000, max_functions: 2, ..limits };
        assert!(check_shape(&module(&"nop ".repeat(2000)), &small).unwrap_err().contains("bytes long"));
        let three = wat::parse_str("(module (func) (func) (func))").unwrap();
        assert!(check_shape(&three, &small).unwrap_err().contains("more than 2 functions"));
        check_shape(&module(&format!("{}{}", "(block ".repeat(500), ")".repeat(500))), &limits).unwrap();
    }
}
