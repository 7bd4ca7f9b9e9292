//! QMP's guest memory commands: `pmemsave` (QEMU's arguments `val`,
//! `size`, `filename` and its words for bad ones).

use serde_json::{Map, Value};
use vmm_pc::Command;

/// The machine command for memory command `command`, if it is one.
pub fn parse(command: &str, arguments: &Map<String, Value>) -> Option<Result<Command, String>> {
    if command != "pmemsave" {
        return None;
    }
    Some((|| {
        if let Some(name) = arguments
            .keys()
            .find(|k| !["val", "size", "filename"].contains(&k.as_str()))
        {
            return Err(format!("Parameter '{name}' is unexpected"));
        }
        let number = |name: &str| match arguments.get(name) {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("Invalid parameter type for '{name}', expected: integer")),
            None => Err(format!("Parameter '{name}' is missing")),
        };
        let addr = number("val")?;
        let size = number("size")?;
        let path = match arguments.get("filename") {
            Some(Value::String(f)) => f.into(),
            Some(_) => return Err("Invalid parameter type for 'filename', expected: string".into()),
            None => return Err("Parameter 'filename' is missing".into()),
        };
        Ok(Command::PhysMemSave { addr, size, path })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn qemus_arguments_and_words() {
        assert_eq!(
            parse(
                "pmemsave",
                &args(json!({"val": 4096, "size": 65536, "filename": "/tmp/m"}))
            )
            .unwrap()
            .unwrap(),
            Command::PhysMemSave {
                addr: 4096,
                size: 65536,
                path: "/tmp/m".into()
            }
        );
        let err = |v: Value| parse("pmemsave", &args(v)).unwrap().unwrap_err();
        assert_eq!(
            err(json!({"size": 1, "filename": "f"})),
            "Parameter 'val' is missing"
        );
        assert_eq!(
            err(json!({"val": -1, "size": 1, "filename": "f"})),
            "Invalid parameter type for 'val', expected: integer"
        );
        assert_eq!(
            err(json!({"val": 0, "size": "1", "filename": "f"})),
            "Invalid parameter type for 'size', expected: integer"
        );
        assert_eq!(
            err(json!({"val": 0, "size": 1, "filename": 3})),
            "Invalid parameter type for 'filename', expected: string"
        );
        assert_eq!(
            err(json!({"val": 0, "size": 1, "filename": "f", "cpu-index": 0})),
            "Parameter 'cpu-index' is unexpected"
        );
        assert!(parse("memsave", &Map::new()).is_none());
    }
}
