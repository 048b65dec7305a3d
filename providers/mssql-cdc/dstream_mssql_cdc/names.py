"""ODBC connection strings and SQL Server names: parsed the way the driver and the server
read them, with errors that say where the problem is and never repeat the secret."""

from __future__ import annotations


def parse_connection_string(text: str) -> dict[str, str]:
    """ODBC ``KEY=value;KEY={value; with braces}`` → ``{key (lower case): value}``.

    Values in braces may hold ``;`` and ``=``; ``}}`` inside braces is a literal ``}``.
    Errors say where the problem is, never what the string holds.
    """
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in "; \t\r\n":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        stop = text.find(";", i)
        if eq < 0 or (0 <= stop < eq):
            raise ValueError(f"invalid connection string: attribute {len(out) + 1} has no '=' (expected KEY=value)")
        key = text[i:eq].strip().lower()
        if not key:
            raise ValueError(f"invalid connection string: attribute {len(out) + 1} has an empty name")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "{":
            braced = _read_delimited(text, i + 1, "}")
            if braced is None:
                raise ValueError(f"invalid connection string: the value of {key.upper()} has no closing '}}'")
            value, i = braced
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] != ";":
                raise ValueError(f"invalid connection string: unexpected text after the braced value of {key.upper()}")
        else:
            end = text.find(";", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        out[key] = value
    if not out:
        raise ValueError("the connection string is empty")
    return out


def parse_table_name(name: str) -> tuple[str | None, str]:
    """``dbo.Orders`` / ``Orders`` / ``[dbo].[Order Details]`` → (schema or None, table)."""
    parts: list[str] = []
    i, n = 0, len(name)
    if not name.strip():
        raise ValueError("table names must not be empty")
    while True:
        if i < n and name[i] == "[":
            bracketed = _read_delimited(name, i + 1, "]")
            if bracketed is None:
                raise ValueError(f"table name {name!r}: '[' has no closing ']'")
            part, i = bracketed
        else:
            end = name.find(".", i)
            end = n if end < 0 else end
            part = name[i:end].strip()
            i = end
        if not part:
            raise ValueError(f"table name {name!r} has an empty part (expected schema.table)")
        parts.append(part)
        if i >= n:
            break
        if name[i] != ".":
            raise ValueError(f"table name {name!r}: expected '.' after ']'")
        i += 1
    if len(parts) > 2:
        raise ValueError(
            f"table name {name!r} has {len(parts)} parts: use schema.table "
            f"(the database comes from the connection string)"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _read_delimited(text: str, start: int, close: str) -> tuple[str, int] | None:
    """The text from ``start`` to the first single ``close`` (a doubled one is a literal ``close``)
    and the index just past it; None when it is never closed."""
    chars: list[str] = []
    i, n = start, len(text)
    while i < n:
        if text[i] == close:
            if i + 1 < n and text[i + 1] == close:
                chars.append(close)
                i += 2
                continue
            return "".join(chars), i + 1
        chars.append(text[i])
        i += 1
    return None


def quote_name(name: str) -> str:
    """A SQL Server identifier in brackets (``]`` doubled): safe to splice into SQL."""
    return "[" + name.replace("]", "]]") + "]"


def table_key(name: str) -> tuple[str | None, str]:
    """How SQL Server compares a configured table name (case-insensitively, as the usual collations do)."""
    schema, table = parse_table_name(name)
    return (schema.lower() if schema else None, table.lower())


def split_column_list(text: str | None) -> tuple[str, ...]:
    """``[id], [name]`` (sys.sp_cdc_help_change_data_capture's index_column_list and
    captured_column_list) → ``("id", "name")``; plain names are taken as they are."""
    if not text:
        return ()
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in ", \t\r\n":
            i += 1
        if i >= n:
            break
        if text[i] == "[":
            found = _read_delimited(text, i + 1, "]")
            if found is None:
                raise ValueError(f"column list {text!r}: '[' has no closing ']'")
            name, i = found
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            name, i = text[i:end].strip(), end
        out.append(name)
    return tuple(out)
