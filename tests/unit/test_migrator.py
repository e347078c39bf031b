"""The repairing migrator runs a migration's script statement by statement: the split must keep quoted
text whole (a `;` in a table comment is not the end of a statement)."""

from models.migrator import statements


def test_statements_split_on_semicolons_outside_quotes_only() -> None:
    script = """
    CREATE TABLE "a;b" ("id" INT);
    COMMENT ON TABLE "a;b" IS 'one; two ''three;'' four';

    CREATE INDEX "i" ON "a;b" ("id");
    """
    assert statements(script) == [
        'CREATE TABLE "a;b" ("id" INT)',
        """COMMENT ON TABLE "a;b" IS 'one; two ''three;'' four'""",
        'CREATE INDEX "i" ON "a;b" ("id")',
    ]


def test_statements_of_an_empty_script() -> None:
    assert statements(" ;\n; ") == []
