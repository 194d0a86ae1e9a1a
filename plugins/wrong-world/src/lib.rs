//! `wrong-world`: a well-formed component that exports `example:greeter`
//! instead of the sluice handler. Used to test that the host rejects it with a
//! clear error and keeps serving other plugins.
wit_bindgen::generate!({ path: "wit", world: "greeter" });

struct Greeter;

impl exports::example::greeter::greet::Guest for Greeter {
    fn hello(name: String) -> String {
        format!("hello {name}")
    }
}

export!(Greeter);
