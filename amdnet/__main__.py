from amdnet.cli import main

main()
