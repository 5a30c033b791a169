#!/usr/bin/env escript
%% Dialyzer on the demo modules. They are compiled apart from the application (see demo.sh), so
%% `rebar3 dialyzer' does not see them; `extra_src_dirs' cannot take them either, since rebar3
%% would put their beams in _build/default/lib/demo, beside the applications.
%%
%% They are analysed from source together with the application's modules, whose specs their
%% calls are checked against, using the PLT and the warnings of `rebar3 dialyzer' (run it
%% first). Prints the warnings; exits 1 if there are any.

main([]) ->
    Root = filename:dirname(filename:dirname(filename:absname(escript:script_name()))),
    Erlang = filename:join(Root, "erlang"),
    {ok, Config} = file:consult(filename:join(Erlang, "rebar.config")),
    Warnings = proplists:get_value(warnings, proplists:get_value(dialyzer, Config, []), []),
    Plt = filename:join([Erlang, "_build", "default", "rebar3_" ++ otp_version() ++ "_plt"]),
    filelib:is_regular(Plt) orelse fail("no PLT at ~ts: run `rebar3 dialyzer' in erlang/ first",
                                        [Plt]),
    Files = filelib:wildcard(filename:join([Erlang, "src", "*.erl"]))
        ++ filelib:wildcard(filename:join([Root, "demo", "*.erl"])),
    Found = dialyzer:run([{analysis_type, succ_typings}, {from, src_code}, {files, Files},
                          {init_plt, Plt}, {check_plt, false}, {warnings, Warnings}]),
    [io:put_chars([dialyzer:format_warning(W), "\n"]) || W <- Found],
    io:format("dialyzer-demo: ~b warnings in ~b modules~n", [length(Found), length(Files)]),
    halt(min(length(Found), 1));
main(_) ->
    fail("usage: dialyzer-demo.escript", []).

%% The OTP version in rebar3's PLT names ("25.2.3"): the release's OTP_VERSION file.
otp_version() ->
    Release = erlang:system_info(otp_release),
    case file:read_file(filename:join([code:root_dir(), "releases", Release, "OTP_VERSION"])) of
        {ok, Version} -> string:trim(binary_to_list(Version), trailing, "\n*");
        {error, _} -> Release
    end.

fail(Format, Args) ->
    io:format(standard_error, "dialyzer-demo: " ++ Format ++ "~n", Args),
    halt(2).
