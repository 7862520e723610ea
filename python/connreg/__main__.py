from connreg.cli.main import main

raise SystemExit(main())
