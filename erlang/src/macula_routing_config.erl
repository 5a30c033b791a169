%% @doc Reads the `Config' map of `macula_routing_server:start_link/2'.
%%
%% Existing callers pass `#{k => 20, alpha => 3}'; every other setting has a default, unknown keys
%% are ignored (as before), and a known key with a bad value is refused with
%% `{error, {invalid_config, Key, Value}}' before any process starts.
-module(macula_routing_config).

-export([parse/1, defaults/0]).

-export_type([config/0]).

-type config() :: #{k := pos_integer(),
                    alpha := pos_integer(),
                    replacements := non_neg_integer(),
                    max_keys := pos_integer(),
                    max_providers_per_key := pos_integer(),
                    max_record_bytes := pos_integer(),
                    max_key_bytes := pos_integer(),
                    default_ttl := pos_integer(),
                    max_ttl := pos_integer(),
                    read_cache := non_neg_integer(),
                    expire_interval_ms := pos_integer()}.

%% Upper bounds keep a typo from asking for absurd memory or timers.
-define(SETTINGS, [
    %% {Key, Default, Min, Max}
    {k, 20, 1, 65536},
    {alpha, 3, 1, 64},
    {replacements, 8, 0, 1024},
    {max_keys, 1000000, 1, 100000000},
    {max_providers_per_key, 1000, 1, 1000000},
    {max_record_bytes, 65536, 64, 16777216},
    {max_key_bytes, 1024, 1, 65536},
    {default_ttl, 300, 1, 31536000},
    {max_ttl, 86400, 1, 31536000},
    %% keys whose decoded provider lists are kept for fast repeated reads (0 = none)
    {read_cache, 1024, 0, 1000000},
    {expire_interval_ms, 1000, 10, 3600000}
]).

-spec defaults() -> config().
defaults() ->
    maps:from_list([{Key, Default} || {Key, Default, _, _} <- ?SETTINGS]).

-spec parse(term()) -> {ok, config()} | {error, {invalid_config, term(), term()}}.
parse(Config) when is_map(Config) ->
    parse(?SETTINGS, Config, #{});
parse(Config) ->
    {error, {invalid_config, config, Config}}.

parse([], _Config, Acc) ->
    check_ttls(Acc);
parse([{Key, Default, Min, Max} | Rest], Config, Acc) ->
    case maps:get(Key, Config, Default) of
        Value when is_integer(Value), Value >= Min, Value =< Max ->
            parse(Rest, Config, Acc#{Key => Value});
        Value ->
            {error, {invalid_config, Key, Value}}
    end.

check_ttls(#{default_ttl := Default, max_ttl := Max}) when Default > Max ->
    {error, {invalid_config, default_ttl, Default}};
check_ttls(Config) ->
    {ok, Config}.
