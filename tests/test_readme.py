"""The README's generated parts stay true: the merge-method table is the registry's."""
import os

from ppmerge.merge.docs import END, START, methods_markdown, replace_block

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_method_table_matches_the_registry():
    from ppmerge.merge import METHODS

    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert replace_block(text, methods_markdown()) == text, "run: python -m ppmerge.merge.docs README.md"
    block = text.split(START, 1)[1].split(END, 1)[0]
    for name, method in METHODS.items():  # every method and every parameter is documented
        assert f"| `{name}` |" in block
        for param in method.params:
            assert f"`{param}` (" in block
