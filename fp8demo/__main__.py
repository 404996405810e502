from fp8demo.cli import main

raise SystemExit(main())
