"""Static files of the agent's web view (HTML, script, style sheet), shipped in the wheel."""
