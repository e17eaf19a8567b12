"""What people use: the command line, the HTML report and the dashboard."""
