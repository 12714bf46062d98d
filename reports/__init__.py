"""Reports over run directories: rliable-style estimators (`stats`), runs and variants (`runs`), figures (`plots`),
and the comparison report that compare.py writes (`report`)."""
