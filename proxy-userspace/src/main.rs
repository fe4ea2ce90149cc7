fn main() -> anyhow::Result<()> {
    proxy_userspace::cli::main()
}
