from picogpt.export.cli import main

main()
