"""Which tables and columns are encrypted, their data types and search indexes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from .config import check_name
from .errors import ClientInitError

DataType = Literal["text", "int", "float", "bool", "date", "datetime", "json"]
DATA_TYPES: tuple[str, ...] = get_args(DataType)


@dataclass(frozen=True)
class MatchIndex:
    """Free-text match index: a bloom filter of ``ngram``-grams of lower-cased words."""

    ngram: int = 3
    filter_size: int = 2048
    hash_count: int = 3

    def __post_init__(self) -> None:
        if not 2 <= self.ngram <= 8:
            raise ClientInitError("free_text_search ngram must be between 2 and 8")
        if self.filter_size not in (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
            raise ClientInitError("free_text_search filter_size must be a power of two, 256..65536")
        if not 1 <= self.hash_count <= 16:
            raise ClientInitError("free_text_search hash_count must be between 1 and 16")


@dataclass(frozen=True)
class EncryptedColumn:
    """An encrypted column. Build with :func:`encrypted_column` and the chained methods."""

    name: str
    kind: DataType = "text"
    equality_index: bool = False
    match_index: MatchIndex | None = None
    #: values are always locked to an identity (see :meth:`require_lock_context`)
    lock_required: bool = False

    def data_type(self, kind: DataType) -> EncryptedColumn:
        """Declare the plaintext type; decrypt returns the same Python type.

        :raises ClientInitError: unknown type, or a match index on a non-text column.
        """
        if kind not in DATA_TYPES:
            raise ClientInitError(f"unknown data type {kind!r}: use one of {', '.join(DATA_TYPES)}")
        if self.match_index is not None and kind != "text":
            raise ClientInitError("free_text_search needs a text column")
        return replace(self, kind=kind)

    def equality(self) -> EncryptedColumn:
        """Add an equality index (exact match; text is NFC-normalised)."""
        return replace(self, equality_index=True)

    def free_text_search(
        self, *, ngram: int = 3, filter_size: int = 2048, hash_count: int = 3
    ) -> EncryptedColumn:
        """Add a free-text match index (bloom filter of trigrams of lower-cased words).

        :raises ClientInitError: bad options, or the column is not text.
        """
        if self.kind != "text":
            raise ClientInitError("free_text_search needs a text column")
        return replace(self, match_index=MatchIndex(ngram, filter_size, hash_count))

    def require_lock_context(self) -> EncryptedColumn:
        """Values of this column are always locked to an identity: encrypting or querying it
        without a lock context raises ``LockContextError``, and a payload of it that is not
        locked (encrypted without a lock context, or swapped in from elsewhere by someone who
        can write the database) does not decrypt (``DecryptionError``)."""
        return replace(self, lock_required=True)

    @property
    def searchable(self) -> bool:
        return self.equality_index or self.match_index is not None


def encrypted_column(name: str) -> EncryptedColumn:
    """A text column named ``name`` with no index; chain ``.data_type()``, ``.equality()``,
    ``.free_text_search()``, ``.require_lock_context()``.

    :raises ConfigurationError: invalid name.
    """
    return EncryptedColumn(check_name("column", name))


class EncryptedTable:
    """A table's encrypted columns, keyed by model field name: ``users.email`` (or
    ``users["email"]``) is a column. The table's own name is ``table_name``."""

    _RESERVED = frozenset({"table_name", "columns", "column"})

    def __init__(self, table_name: str, columns: dict[str, EncryptedColumn]) -> None:
        self.table_name = check_name("table", table_name)
        seen: set[str] = set()
        for field, col in columns.items():
            if field in self._RESERVED or field.startswith("_"):
                raise ClientInitError(f"{table_name}: a field may not be named {field!r}")
            if not isinstance(col, EncryptedColumn):
                raise ClientInitError(f"{table_name}.{field} must be an encrypted_column(...)")
            if col.name in seen:
                raise ClientInitError(f"table {table_name} declares column {col.name!r} twice")
            seen.add(col.name)
        self.columns: dict[str, EncryptedColumn] = dict(columns)
        self._by_column = {c.name: c for c in columns.values()}

    def __getattr__(self, field: str) -> EncryptedColumn:
        try:
            return self.__dict__["columns"][field]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(f"table {self.__dict__.get('table_name')!r} has no column {field!r}") from None

    def __getitem__(self, field: str) -> EncryptedColumn:
        try:
            return self.columns[field]
        except KeyError:
            raise KeyError(f"table {self.table_name!r} has no column {field!r}") from None

    def column(self, ref: EncryptedColumn | str) -> EncryptedColumn:
        """Resolve a column object, a field name or a column name.

        :raises ClientInitError: not a column of this table.
        """
        if isinstance(ref, EncryptedColumn):
            if self._by_column.get(ref.name) != ref:
                raise ClientInitError(f"column {ref.name!r} is not part of table {self.table_name!r}")
            return ref
        if not isinstance(ref, str):
            raise ClientInitError(f"a column is named by a string or given as encrypted_column(...), not {type(ref).__name__}")
        col = self.columns.get(ref) or self._by_column.get(ref)
        if col is None:
            raise ClientInitError(f"table {self.table_name!r} has no column {ref!r}")
        return col

    def __repr__(self) -> str:
        return f"EncryptedTable({self.table_name!r}, columns={list(self.columns)})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, EncryptedTable) and (self.table_name, self.columns) == (
            other.table_name,
            other.columns,
        )

    def __hash__(self) -> int:
        return hash(self.table_name)


def encrypted_table(table_name: str, /, **columns: EncryptedColumn) -> EncryptedTable:
    """Declare a table: ``encrypted_table("users", email=encrypted_column("email").equality())``.

    :raises ClientInitError: invalid names, reserved field names or duplicate columns.
    """
    return EncryptedTable(table_name, columns)
