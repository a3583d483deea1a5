//! Parsing tracefs `format` files.

/// The `offset:` of `field` in a tracepoint format description.
#[must_use]
pub fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit([' ', '*']).next()?;
        if name != field {
            return None;
        }
        let offset = line
            .split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))?;
        offset.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::field_offset;

    const PREAD64: &str = "name: sys_enter_pread64
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:loff_t pos;\toffset:40;\tsize:8;\tsigned:0;
";

    #[test]
    fn finds_fields_by_name() {
        assert_eq!(field_offset(PREAD64, "fd"), Some(16));
        assert_eq!(field_offset(PREAD64, "buf"), Some(24));
        assert_eq!(field_offset(PREAD64, "pos"), Some(40));
        assert_eq!(field_offset(PREAD64, "count"), None);
    }
}
