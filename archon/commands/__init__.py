"""CLI commands that live in their own modules; registered in archon.cli."""
